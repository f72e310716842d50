// The loss-alone benchmark of issue "GPU performance": lm-head matmul + log-probs + sigmoid DPO loss, forward +
// backward, on random inputs: torch-dpo's fused path (lossBenchmark, checked against its naive full-logits path on
// the same inputs) vs the Python peers of bench/peer/loss_step.py (naive eager, naive under torch.compile, Liger's
// fused linear DPO loss), each case also against its matmul floor (6·M·H·V FLOP at the rate of a large matmul of the
// same dtype measured in the same run). Prints one table.
//   node dist/bench/loss_step.js [--cases 2048x128256,4096x128256,4096x32000] [--pairs 4] [--seq 1024] [--prompt 0]
//       [--iters 10] [--warmup 3] [--device cuda] [--dtype bfloat16] [--chunk-rows 4096] [--peers naive,compile,liger]
//       [--python python3]
// Default: the issue's cases in bfloat16 on CUDA. `--device cpu --dtype float32 --cases 64x512 --seq 64` runs the
// same pipeline on a CPU (how the script itself is tested).
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { arg, flag } from './common';
import { lossBenchmark, LossBenchmarkResult } from '../lib/loss_benchmark';
import { matmulBenchmark, runtimeInfo } from '../lib/runtime';
import type { Device, DType } from '../lib/validate';

const device = flag('device', 'cuda') as Device;
const dtype = flag('dtype', 'bfloat16') as DType;
const shape = { pairs: arg('pairs', 4), seq: arg('seq', 1024), prompt: arg('prompt', 0), iters: arg('iters', 10), warmup: arg('warmup', 3) };
const chunkRows = arg('chunk-rows', 4096);
const cases = flag('cases', '2048x128256,4096x128256,4096x32000').split(',').filter(Boolean).map((c) => {
  const [h, v] = c.split('x').map(Number);
  if (!Number.isInteger(h) || !Number.isInteger(v)) throw new Error(`Expected HIDDENxVOCAB for --cases but received ${c}`);
  return { hidden: h, vocab: v };
});
const peers = flag('peers', 'naive,compile,liger').split(',').filter(Boolean);
const python = flag('python', 'python3');

interface Row { impl: string; ms?: number; peak?: number; loss?: number; flop?: number; note?: string }

function peer(variant: string, hidden: number, vocab: number): Row {
  const args = [path.join(__dirname, '..', '..', 'bench', 'peer', 'loss_step.py'), '--variant', variant, '--device', device, '--dtype', dtype,
    '--hidden', String(hidden), '--vocab', String(vocab), '--threads', String(os.availableParallelism()),
    ...Object.entries(shape).flatMap(([k, v]) => [`--${k}`, String(v)])];
  const r = spawnSync(python, args, { encoding: 'utf8' });
  const line = r.stdout?.trim().split('\n').filter((l) => l.startsWith('{')).at(-1);
  if (r.status !== 0 || !line) return { impl: variant, note: (r.stderr || String(r.error)).trim().split('\n').at(-1) };
  const j = JSON.parse(line);
  return { impl: variant, ms: j.ms_median, peak: j.peak_bytes, loss: j.loss, flop: j.matmul_flop, note: [j.note, j.compile_s ? `compile ${j.compile_s.toFixed(1)} s` : ''].filter(Boolean).join('; ') };
}

async function main(): Promise<void> {
  const info = runtimeInfo();
  const cuda = device !== 'cpu';
  // the matmul rate of this device and dtype: the floor is 6·M·H·V FLOP at this rate
  const gflops = await matmulBenchmark(cuda ? 8192 : 512, cuda ? 50 : 3, device, dtype);
  console.log(`DPO loss alone (lm-head + log-probs + sigmoid DPO, forward + backward): ${shape.pairs} pairs × ${shape.seq} tokens (${shape.prompt} not scored), ` +
    `${dtype} on ${device}; median of ${shape.iters} after ${shape.warmup}; libtorch ${info.libtorchVersion}; matmul rate ${gflops >= 1000 ? `${(gflops / 1000).toFixed(1)} TFLOP/s` : `${gflops.toFixed(1)} GFLOP/s`}; ${new Date().toISOString().slice(0, 10)}`);
  console.log(`| H × V | implementation | ms | × matmul floor | ${cuda ? 'peak GiB above inputs' : 'peak'} | loss | torch-dpo speed-up | note |`);
  console.log('|---|---|---|---|---|---|---|---|');
  const checks: string[] = [];
  let peerLossDiff = 0;
  for (const c of cases) {
    const ours: LossBenchmarkResult = await lossBenchmark({ ...shape, ...c, chunkRows, impl: 'fused', compare: true, device, dtype });
    const rows: Row[] = [{ impl: 'torch-dpo fused', ms: ours.msMedian, peak: ours.peakBytes, loss: ours.loss, flop: ours.matmulFlop }];
    checks.push(`${c.hidden}×${c.vocab}: loss ${ours.lossRelDiff?.toExponential(1)}, grad hidden ${ours.gradHiddenRelDiff?.toExponential(1)}, grad weight ${ours.gradWeightRelDiff?.toExponential(1)}`);
    for (const v of peers) rows.push(peer(v, c.hidden, c.vocab));
    for (const r of rows.slice(1)) if (r.loss !== undefined) peerLossDiff = Math.max(peerLossDiff, Math.abs(r.loss - ours.loss) / Math.abs(ours.loss));
    for (const r of rows) {
      if (r.ms === undefined) {
        console.log(`| ${c.hidden} × ${c.vocab} | ${r.impl} | — | — | — | — | — | ${r.note ?? ''} |`);
        continue;
      }
      const floorMs = (r.flop! / (gflops * 1e9)) * 1000;
      const speedup = r === rows[0] ? '' : `${(r.ms / rows[0].ms!).toFixed(2)}×`;
      const peak = cuda ? (r.peak! / 2 ** 30).toFixed(2) : '—';
      console.log(`| ${c.hidden} × ${c.vocab} | ${r.impl} | ${r.ms.toFixed(1)} | ${(r.ms / floorMs).toFixed(2)} | ${peak} | ${r.loss!.toFixed(4)} | ${speedup} | ${r.note ?? ''} |`);
    }
  }
  console.log(`\ntorch-dpo fused vs its naive full-logits path on the same inputs (relative differences, ${dtype}): ${checks.join('; ')}`);
  // The peers draw their inputs from the same seed with the same libtorch generator, so their losses should match
  // torch-dpo's (a check that every implementation computed the same loss on the same data).
  console.log(`peer losses vs torch-dpo's, same seeded inputs: max relative difference ${peerLossDiff.toExponential(1)}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
