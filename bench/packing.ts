// CPU benchmark of padding-free packing: the same DPO training steps (cached reference log-probs, AdamW, clipping)
// on a dataset with mixed lengths, padded vs paddingFree, through the public DPOTrainer API, in one process (padded
// first, then packed; same batches in the same order). Prints a table: step time, non-pad tokens per second, and the
// rows per micro-batch before and after packing (first-fit decreasing by length into rows of the batch length, as
// native/core/packing.cpp plans it; recomputed here from the known lengths).
//   npm run build:ts && node dist/bench/packing.js [--hidden 256 --layers 4 --vocab 8192 --min-len 16 --max-len 256
//                                                    --batch 4 --steps 4 --threads 2 --repeat 2]
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { arg, lcg, writeBenchModel } from './common';
import { DPOTrainer } from '../lib/trainer/dpo_trainer';
import { precomputeReference } from '../lib/trainer/precompute';
import { runtimeInfo, setThreads } from '../lib/runtime';


const cfg = {
  hidden: arg('hidden', 256), layers: arg('layers', 4), vocab: arg('vocab', 8192), minLen: arg('min-len', 16), maxLen: arg('max-len', 256),
  batch: arg('batch', 4), steps: arg('steps', 4), warmup: 1, threads: arg('threads', os.availableParallelism()), repeat: arg('repeat', 2),
};

type Pair = { prompt_ids: number[]; chosen_ids: number[]; rejected_ids: number[] };

// Pairs whose prompt + chosen and prompt + rejected lengths are each uniform in [minLen, maxLen].
function makePairs(n: number): Pair[] {
  const next = lcg(11);
  const uniform = (lo: number, hi: number) => lo + (next() % (hi - lo + 1));
  const tok = () => 4 + (next() % (cfg.vocab - 4));
  return Array.from({ length: n }, () => {
    const p = uniform(2, Math.max(2, Math.floor(cfg.minLen / 2)));
    const lc = uniform(cfg.minLen, cfg.maxLen), lr = uniform(cfg.minLen, cfg.maxLen);
    return {
      prompt_ids: [1, ...Array.from({ length: p - 1 }, tok)],
      chosen_ids: [...Array.from({ length: lc - p - 1 }, tok), 2],
      rejected_ids: [...Array.from({ length: lr - p - 1 }, tok), 2],
    };
  });
}

// Packed rows of a micro-batch with these sequence lengths: first-fit decreasing into rows of `cap` tokens.
function packedRows(lengths: number[], cap: number): number {
  const used: number[] = [];
  for (const L of [...lengths].sort((a, b) => b - a)) {
    const r = used.findIndex((u) => u + L <= cap);
    if (r < 0) used.push(L);
    else used[r] += L;
  }
  return used.length;
}

async function prepare(dir: string): Promise<{ model: string; pairs: string; data: Pair[] }> {
  const model = await writeBenchModel(path.join(dir, 'model'), cfg);
  const data = makePairs(cfg.batch * (cfg.warmup + cfg.steps));
  const pairs = path.join(dir, 'pairs.jsonl');
  fs.writeFileSync(pairs, data.map((r) => JSON.stringify(r)).join('\n') + '\n');
  return { model, pairs, data };
}

async function run(dir: string, model: string, pairs: string, paddingFree: boolean, tag: string): Promise<{ msPerStep: number; seconds: number; losses: number[] }> {
  const t = await DPOTrainer.create({
    policy: model, refCache: path.join(dir, 'cache'), data: pairs, outputDir: path.join(dir, `out-${paddingFree ? 'packed' : 'padded'}-${tag}`),
    perDeviceTrainBatchSize: cfg.batch, maxSteps: cfg.warmup + cfg.steps, loggingSteps: 1, saveSteps: 0, shuffle: false, learningRate: 1e-5,
    maxGradNorm: 1, maxLength: 1 << 20, maxPromptLength: (1 << 20) - 1, chunkRows: 1024, paddingFree,
  });
  const stamps: number[] = [];
  const losses: number[] = [];
  let t0 = Date.now();
  for await (const m of t.train()) {
    const now = Date.now();
    if (m.step > cfg.warmup) stamps.push(now - t0);
    losses.push(m.loss);
    t0 = now;
  }
  await t[Symbol.asyncDispose]();  // the final checkpoint write is outside the timed steps
  const sorted = [...stamps].sort((a, b) => a - b);
  return { msPerStep: sorted[Math.floor(sorted.length / 2)], seconds: stamps.reduce((a, b) => a + b, 0) / 1000, losses };
}

async function main(): Promise<void> {
  setThreads(cfg.threads);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdpo-bench-packing-'));
  const { model, pairs, data } = await prepare(dir);
  await precomputeReference({ reference: model, data: pairs, cache: path.join(dir, 'cache'), batchSize: 8 });
  // Rows, padded tokens and non-pad tokens of the timed micro-batches (shuffle off: batch k holds pairs k*B..k*B+B-1).
  let rowsBefore = 0, rowsAfter = 0, tokens = 0, padded = 0, packed = 0;
  for (let k = cfg.warmup; k < cfg.warmup + cfg.steps; k++) {
    const b = data.slice(k * cfg.batch, (k + 1) * cfg.batch);
    const lens = [...b.map((p) => p.prompt_ids.length + p.chosen_ids.length), ...b.map((p) => p.prompt_ids.length + p.rejected_ids.length)];
    const T = Math.max(...lens);
    rowsBefore += lens.length;
    const R = packedRows(lens, T);
    rowsAfter += R;
    packed += R * T;
    tokens += lens.reduce((a, c) => a + c, 0);
    padded += lens.length * T;
  }
  // Alternating runs (padded, packed, padded, ...); each path keeps its fastest run (the machine may be shared).
  type Run = Awaited<ReturnType<typeof run>>;
  const best = (x: Run | undefined, y: Run) => (x && x.seconds <= y.seconds ? x : y);
  let a: Run | undefined, p: Run | undefined;
  for (let r = 0; r < cfg.repeat; r++) {
    a = best(a, await run(dir, model, pairs, false, String(r)));
    p = best(p, await run(dir, model, pairs, true, String(r)));
  }
  if (!a || !p) throw new Error('--repeat must be >= 1');
  const maxLossDiff = Math.max(...a.losses.map((l, i) => Math.abs(l - p.losses[i])));
  const info = runtimeInfo();
  const steps = cfg.steps;
  console.log(`\nPadding-free packing (llama hidden ${cfg.hidden}, ${cfg.layers} layers, vocab ${cfg.vocab}; ${cfg.batch} pairs per step, ` +
    `sequence lengths uniform in [${cfg.minLen}, ${cfg.maxLen}]; ${cfg.threads} threads; libtorch ${info.libtorchVersion}; ${os.cpus()[0].model}; ` +
    `${new Date().toISOString().slice(0, 10)}; ${steps} timed steps after ${cfg.warmup} warm-up; best of ${cfg.repeat} alternating runs per path)`);
  console.log('| path | ms/step (median) | tokens/s (non-pad) | rows per step | computed tokens per step (incl. pad) |');
  console.log('|---|---|---|---|---|');
  console.log(`| padded | ${a.msPerStep.toFixed(0)} | ${(tokens / a.seconds).toFixed(0)} | ${(rowsBefore / steps).toFixed(2)} | ${(padded / steps).toFixed(0)} |`);
  console.log(`| padding-free (packed) | ${p.msPerStep.toFixed(0)} | ${(tokens / p.seconds).toFixed(0)} | ${(rowsAfter / steps).toFixed(2)} | ${(packed / steps).toFixed(0)} |`);
  console.log(`| ratio | ${(a.msPerStep / p.msPerStep).toFixed(2)}x faster | ${(a.seconds / p.seconds).toFixed(2)}x | ${(rowsBefore / rowsAfter).toFixed(2)}x fewer | |`);
  console.log(`non-pad tokens per step: ${(tokens / steps).toFixed(0)}; max |loss padded - loss packed| over all steps: ${maxLossDiff.toExponential(2)}`);
  fs.rmSync(dir, { recursive: true, force: true });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
