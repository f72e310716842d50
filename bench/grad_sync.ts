// CPU benchmark of data-parallel gradient synchronisation: 2 ranks (gloo on loopback, one intra-op thread each) run
// the same DPO step (reference-free sigmoid loss, AdamW, random Llama) with the gradient all-reduce overlapped with
// the backward pass (bucket by bucket, the default) and with one all-reduce of every bucket before the optimizer step;
// a single process with one thread on one rank's batch is the no-communication baseline. Median step time.
//   node dist/bench/grad_sync.js [--hidden 256 --layers 4 --vocab 4096 --seq 128 --batch 2 --steps 6]
import { spawn } from 'node:child_process';
import { Model } from '../lib/model';
import { arg, benchLlamaConfig, freePort, randomTrainerBatch } from './common';
import { callNative } from '../lib/native';
import { addon, setThreads } from '../lib/runtime';
import { trainerConfig } from '../lib/trainer/dpo_trainer';
import { resolveDPOOptions } from '../lib/trainer/options';

const cfg = { hidden: arg('hidden', 256), layers: arg('layers', 4), vocab: arg('vocab', 4096), seq: arg('seq', 128), batch: arg('batch', 2), steps: arg('steps', 6), warmup: 1 };

function modelConfig() {
  return benchLlamaConfig(cfg);
}

/** One rank (or the single process): prints {"rank", "ms": [...]} on stdout. */
async function child(mode: string, rank: number, port: number): Promise<void> {
  setThreads(1);
  await using model = await Model.create(modelConfig(), { seed: 1 });
  const opts = resolveDPOOptions({ policy: 'unused', data: 'unused', outputDir: 'unused', referenceFree: true });
  const trainer = addon().createTrainer(model.native, JSON.stringify(trainerConfig(opts)));
  if (mode !== 'single') await callNative('join', () => trainer.joinDataParallel(rank, 2, rank, '127.0.0.1', port, 60000, mode === 'overlap', 'gloo'));
  const rows = 2 * cfg.batch, T = cfg.seq;
  const { ids, mask, labels } = randomTrainerBatch(rows, T, cfg.vocab, 7 + rank);
  const ms: number[] = [];
  for (let i = 0; i < cfg.warmup + cfg.steps; i++) {
    if (mode !== 'single') await callNative('barrier', () => trainer.barrier()); // start each step together
    const t0 = process.hrtime.bigint();
    await callNative('accumulate', () => trainer.accumulate(ids, mask, labels, null, rows, T, 1, true, null));
    await callNative('step', () => trainer.step(1e-4, 1));
    if (i >= cfg.warmup) ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  trainer.dispose();
  console.log(JSON.stringify({ rank, ms }));
}

function run(mode: string, rank: number, port: number): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [__filename, '--child', mode, String(rank), String(port), ...process.argv.slice(2)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    c.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop()!).ms) : reject(new Error(`${mode} rank ${rank} exited with ${code}`))));
  });
}

const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];

async function main(): Promise<void> {
  const ci = process.argv.indexOf('--child');
  if (ci > 0) return child(process.argv[ci + 1], Number(process.argv[ci + 2]), Number(process.argv[ci + 3]));
  const rowsOut: string[] = [];
  const single = median(await run('single', 0, 0));
  const params = (() => {
    const h = cfg.hidden, I = Math.round((h * 8) / 3 / 8) * 8, kv = h / 2;
    return 2 * cfg.vocab * h + cfg.layers * (h * h * 2 + 2 * h * kv + 3 * h * I + 2 * h) + h;
  })();
  rowsOut.push(`| 1 process (no communication) | ${single.toFixed(0)} | 1.00 |`);
  for (const mode of ['sync-at-step', 'overlap']) {
    const port = await freePort();
    const [a, b] = await Promise.all([run(mode, 0, port), run(mode, 1, port)]);
    const m = Math.max(median(a), median(b));
    rowsOut.push(`| 2 ranks, ${mode === 'overlap' ? 'all-reduce overlapped with backward' : 'all-reduce before the step'} | ${m.toFixed(0)} | ${(m / single).toFixed(2)} |`);
  }
  console.log(`Llama hidden ${cfg.hidden}, ${cfg.layers} layers, vocab ${cfg.vocab} (${(params / 1e6).toFixed(2)} M parameters, ${((params * 4) / 2 ** 20).toFixed(1)} MiB of float32 gradients), ${cfg.batch} pairs × ${cfg.seq} tokens per rank, 1 thread per rank, ${cfg.steps} steps (median)`);
  console.log('| variant | ms/step | vs 1 process |');
  console.log('|---|---|---|');
  for (const r of rowsOut) console.log(r);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
