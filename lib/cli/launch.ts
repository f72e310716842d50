// `torch-dpo launch`: starts N local processes of `torch-dpo <args>` with the torchrun environment (RANK,
// LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), forwards SIGINT/SIGTERM to them, and if one rank fails, stops
// the others and fails naming that rank and its last stderr line.
import { ChildProcess, spawn } from 'node:child_process';
import * as path from 'node:path';
import * as readline from 'node:readline';
import type { Command } from 'commander';
import { checkInt, checkString } from '../validate';
import { parseInteger } from './common';

export interface LaunchOptions {
  /** processes on this node */
  nproc: number;
  nnodes?: number; // default 1
  nodeRank?: number; // default 0
  masterAddr?: string; // default 127.0.0.1
  masterPort?: number; // default 29500
  /** the torch-dpo command line each rank runs, e.g. ['train', '--config', 'c.yaml'] */
  args: string[];
  /** output sink (lines already prefixed with "[rank r] "); default process.stdout / process.stderr */
  out?: (line: string, stream: 'stdout' | 'stderr') => void;
  /** seconds between SIGTERM and SIGKILL when stopping the remaining ranks; default 10 */
  killGraceSeconds?: number;
}

interface Rank {
  rank: number;
  child: ChildProcess;
  lastStderr: string;
  exit?: { code: number | null; signal: NodeJS.Signals | null };
}

/** Runs the ranks of this node; resolves when all exit 0, rejects naming the first rank that failed. */
export async function launch(o: LaunchOptions): Promise<void> {
  const nproc = checkInt(o.nproc, '--nproc', 1, 1024);
  const nnodes = checkInt(o.nnodes ?? 1, '--nnodes', 1, 1 << 16);
  const nodeRank = checkInt(o.nodeRank ?? 0, '--node-rank', 0, nnodes - 1);
  const masterAddr = checkString(o.masterAddr ?? '127.0.0.1', '--master-addr', { nonEmpty: true });
  const masterPort = checkInt(o.masterPort ?? 29500, '--master-port', 1, 65535);
  if (o.args.length === 0) throw new Error('launch: Expected the torch-dpo command to run after `--` (e.g. `-- train --config c.yaml`) but received nothing');
  const grace = (o.killGraceSeconds ?? 10) * 1000;
  const out = o.out ?? ((line, stream) => (stream === 'stdout' ? process.stdout : process.stderr).write(line + '\n'));
  const cli = path.join(__dirname, '..', 'cli.js');
  const worldSize = nproc * nnodes;

  const ranks: Rank[] = [];
  let stopping = false; // we are stopping the ranks (a failure or a forwarded signal)
  let failed: Rank | undefined;
  let forwarded: NodeJS.Signals | undefined;
  const killTimers: NodeJS.Timeout[] = [];

  const stopAll = (sig: NodeJS.Signals) => {
    for (const r of ranks) if (!r.exit) r.child.kill(sig);
    killTimers.push(
      setTimeout(() => {
        for (const r of ranks) if (!r.exit) r.child.kill('SIGKILL');
      }, grace).unref(),
    );
  };
  const onSignal = (sig: NodeJS.Signals) => {
    forwarded = sig;
    stopping = true;
    for (const r of ranks) if (!r.exit) r.child.kill(sig);
  };
  const onInt = () => onSignal('SIGINT');
  const onTerm = () => onSignal('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);

  try {
    const exits: Promise<void>[] = [];
    for (let local = 0; local < nproc; local++) {
      const rank = nodeRank * nproc + local;
      const env = {
        ...process.env,
        RANK: String(rank),
        LOCAL_RANK: String(local),
        WORLD_SIZE: String(worldSize),
        LOCAL_WORLD_SIZE: String(nproc),
        MASTER_ADDR: masterAddr,
        MASTER_PORT: String(masterPort),
      };
      // detached: its own process group, so a terminal's Ctrl-C reaches it once (forwarded), not twice (a second
      // SIGINT would end `train` without its final checkpoint)
      const child = spawn(process.execPath, [cli, ...o.args], { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
      const r: Rank = { rank, child, lastStderr: '' };
      ranks.push(r);
      readline.createInterface({ input: child.stdout! }).on('line', (l) => out(`[rank ${rank}] ${l}`, 'stdout'));
      const errLines = readline.createInterface({ input: child.stderr! });
      errLines.on('line', (l) => {
        if (l.trim()) r.lastStderr = l;
        out(`[rank ${rank}] ${l}`, 'stderr');
      });
      exits.push(
        new Promise<void>((resolve) => {
          let closed = 0;
          const done = () => {
            if (++closed === 2) resolve();
          };
          errLines.on('close', done); // the last stderr line is read before the exit is judged
          child.on('error', (e) => {
            r.lastStderr = e.message;
            r.exit = { code: null, signal: null };
            closed = 1;
            done();
          });
          child.on('exit', (code, signal) => {
            r.exit = { code, signal };
            done();
          });
        }).then(() => {
          const ok = r.exit!.code === 0;
          if (!ok && !stopping) {
            failed = r;
            stopping = true;
            stopAll('SIGTERM');
          }
        }),
      );
    }
    await Promise.all(exits);
  } finally {
    process.removeListener('SIGINT', onInt);
    process.removeListener('SIGTERM', onTerm);
    for (const t of killTimers) clearTimeout(t);
  }
  if (failed) {
    const how = failed.exit!.signal ? `was killed by ${failed.exit!.signal}` : `exited with code ${failed.exit!.code}`;
    throw new Error(`rank ${failed.rank} (of ${worldSize}) ${how}; the other ranks were stopped. Its last stderr line: ${failed.lastStderr || '(none)'}`);
  }
  if (forwarded) {
    const bad = ranks.filter((r) => r.exit!.code !== 0);
    if (bad.length) throw new Error(`stopped by ${forwarded}: rank(s) ${bad.map((r) => r.rank).join(', ')} did not exit cleanly`);
  }
}

export function register(program: Command): void {
  program
    .command('launch')
    .description('run a torch-dpo command (e.g. train) as N data-parallel processes: launch --nproc N -- train ...')
    .requiredOption('--nproc <n>', 'processes on this node (one per GPU, or CPU processes)', parseInteger)
    .option('--nnodes <n>', 'nodes taking part (default 1)', parseInteger)
    .option('--node-rank <n>', 'this node\'s index in [0, nnodes) (default 0)', parseInteger)
    .option('--master-addr <host>', 'address of node 0, where rank 0 serves the rendezvous (default 127.0.0.1)')
    .option('--master-port <port>', 'a free TCP port on node 0 (default 29500)', parseInteger)
    .argument('<command...>', 'the torch-dpo command line after `--`')
    .action(async (args: string[], flags: { nproc: number; nnodes?: number; nodeRank?: number; masterAddr?: string; masterPort?: number }) => {
      await launch({ ...flags, args });
    });
}
