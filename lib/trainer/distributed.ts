// Data-parallel settings from the torchrun environment contract (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
// MASTER_PORT; set by `torch-dpo launch`), checked here before anything reaches native code.
import { fail } from '../validate';

export interface DistEnv {
  rank: number;
  worldSize: number;
  localRank: number;
  masterAddr: string;
  masterPort: number;
  /** rendezvous and collective timeout in ms (TORCH_DPO_DIST_TIMEOUT_MS; default 1800000, torch's default) */
  timeoutMs: number;
}

function envInt(env: NodeJS.ProcessEnv, name: string, min: number, max: number): number {
  const raw = env[name];
  const n = raw !== undefined && /^\s*-?\d+\s*$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isInteger(n) || n < min || n > max) fail(`an integer in [${min}, ${max}]`, `environment variable ${name}`, raw);
  return n;
}

/** The data-parallel settings, or undefined for a single process (WORLD_SIZE unset or 1). */
export function readDistEnv(env: NodeJS.ProcessEnv = process.env): DistEnv | undefined {
  if (env.WORLD_SIZE === undefined || env.WORLD_SIZE === '') return undefined;
  const worldSize = envInt(env, 'WORLD_SIZE', 1, 1 << 20);
  if (worldSize === 1) return undefined;
  const rank = envInt(env, 'RANK', 0, worldSize - 1);
  const localRank = env.LOCAL_RANK === undefined ? rank : envInt(env, 'LOCAL_RANK', 0, worldSize - 1);
  const masterAddr = env.MASTER_ADDR;
  if (!masterAddr) fail('a host name or address', 'environment variable MASTER_ADDR', masterAddr);
  const masterPort = envInt(env, 'MASTER_PORT', 1, 65535);
  const timeoutMs = env.TORCH_DPO_DIST_TIMEOUT_MS === undefined ? 1_800_000 : envInt(env, 'TORCH_DPO_DIST_TIMEOUT_MS', 1, 86_400_000);
  return { rank, worldSize, localRank, masterAddr, masterPort, timeoutMs };
}
