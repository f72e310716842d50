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

/** The data-parallel settings, or undefined for a single process (WORLD_SIZE unset). WORLD_SIZE=1 (as torchrun
 *  --nproc 1 sets it) is a real group of one: the same collectives run, which is what a 1-rank cost measurement needs. */
export function readDistEnv(env: NodeJS.ProcessEnv = process.env): DistEnv | undefined {
  if (env.WORLD_SIZE === undefined || env.WORLD_SIZE === '') return undefined;
  const worldSize = envInt(env, 'WORLD_SIZE', 1, 1 << 20);
  const rank = envInt(env, 'RANK', 0, worldSize - 1);
  const localRank = env.LOCAL_RANK === undefined ? rank : envInt(env, 'LOCAL_RANK', 0, worldSize - 1);
  const masterAddr = env.MASTER_ADDR;
  if (!masterAddr) fail('a host name or address', 'environment variable MASTER_ADDR', masterAddr);
  const masterPort = envInt(env, 'MASTER_PORT', 1, 65535);
  const timeoutMs = env.TORCH_DPO_DIST_TIMEOUT_MS === undefined ? 1_800_000 : envInt(env, 'TORCH_DPO_DIST_TIMEOUT_MS', 1, 86_400_000);
  return { rank, worldSize, localRank, masterAddr, masterPort, timeoutMs };
}

export type DistBackend = 'gloo' | 'nccl';

/** The process-group backend for `choice` on `device`, given the backends this build has (runtimeInfo().distBackends). */
export function resolveDistBackend(choice: 'auto' | DistBackend, device: string, available: readonly string[]): DistBackend {
  const cuda = device.startsWith('cuda');
  const want: DistBackend = choice === 'auto' ? (cuda && available.includes('nccl') ? 'nccl' : 'gloo') : choice;
  if (want === 'nccl' && !cuda) fail("a CUDA device with distBackend 'nccl' (NCCL reduces GPU memory)", 'device', device);
  if (!available.includes(want)) {
    const how = want === 'gloo' ? 'gloo headers (apt-get install -y libgloo-dev) at build time' : 'a CUDA libtorch with NCCL and nccl.h (NCCL_INCLUDE) at build time';
    fail(`a backend this build has (${available.join(', ') || 'none'}; '${want}' needs ${how})`, 'distBackend', want);
  }
  return want;
}
