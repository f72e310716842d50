// CPU benchmark: one DPO training step (cached reference log-probs, AdamW, clipping) through torch-dpo's public API
// vs the same step in Python PyTorch eager (bench/peer/llama_dpo_step.py: full logits -> log_softmax -> gather), on
// the same checkpoint, pairs, threads and libtorch build (Debian's python3-torch is libtorch 1.13 as well).
// Each side runs in its own process; prints a table.
//   node dist/bench/cpu_step.js [--hidden 256 --layers 4 --vocab 8192 --seq 128 --batch 4 --steps 10 --threads 2]
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { arg, writeBenchModel, writeRandomPairs } from './common';
import { DPOTrainer } from '../lib/trainer/dpo_trainer';
import { precomputeReference } from '../lib/trainer/precompute';
import { runtimeInfo, setThreads } from '../lib/runtime';


const cfg = { hidden: arg('hidden', 256), layers: arg('layers', 4), vocab: arg('vocab', 8192), seq: arg('seq', 128), batch: arg('batch', 4), steps: arg('steps', 10), warmup: 2, threads: arg('threads', os.availableParallelism()) };

async function prepare(dir: string): Promise<{ model: string; pairs: string }> {
  const model = await writeBenchModel(path.join(dir, 'model'), cfg);
  const pairs = writeRandomPairs(path.join(dir, 'pairs.jsonl'), 64, cfg.seq, Math.floor(cfg.seq / 4), cfg.vocab);
  return { model, pairs };
}

async function torchDpoChild(dir: string): Promise<void> {
  setThreads(cfg.threads);
  const model = path.join(dir, 'model');
  const pairs = path.join(dir, 'pairs.jsonl');
  const cache = path.join(dir, 'cache');
  await precomputeReference({ reference: model, data: pairs, cache, batchSize: 8 });
  const t = await DPOTrainer.create({
    policy: model, refCache: cache, data: pairs, outputDir: path.join(dir, 'out'), perDeviceTrainBatchSize: cfg.batch, maxSteps: cfg.warmup + cfg.steps,
    loggingSteps: 1, saveSteps: 0, shuffle: false, learningRate: 1e-5, maxGradNorm: 1, maxLength: 1 << 20, maxPromptLength: (1 << 20) - 1, chunkRows: 1024,
  });
  const stamps: number[] = [];
  let tokens = 0;
  let t0 = Date.now();
  for await (const m of t.train()) {
    const now = Date.now();
    if (m.step > cfg.warmup) {
      stamps.push(now - t0);
      tokens += m.tokens_per_second * ((now - t0) / 1000);
    }
    t0 = now;
  }
  // the final checkpoint write is outside the timed steps
  await t[Symbol.asyncDispose]();
  const sorted = [...stamps].sort((a, b) => a - b);
  console.log(JSON.stringify({ ms_per_step: sorted[Math.floor(sorted.length / 2)], tokens_per_second: tokens / (stamps.reduce((a, b) => a + b, 0) / 1000), peak_rss_mib: process.resourceUsage().maxRSS / 1024 }));
}

async function main(): Promise<void> {
  if (process.argv[2] === '--child') return torchDpoChild(process.argv[3]);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdpo-bench-'));
  await prepare(dir);
  const shape = `llama hidden ${cfg.hidden}, ${cfg.layers} layers, vocab ${cfg.vocab}; ${cfg.batch} pairs x ${cfg.seq} tokens; ${cfg.threads} threads`;
  const ours = spawnSync(process.execPath, [__filename, '--child', dir, ...process.argv.slice(2)], { encoding: 'utf8' });
  if (ours.status !== 0) throw new Error(ours.stderr);
  const o = JSON.parse(ours.stdout.trim().split('\n').at(-1)!);
  const peer = spawnSync('/usr/bin/python3', [path.join(__dirname, '..', '..', 'bench', 'peer', 'llama_dpo_step.py'), '--model', path.join(dir, 'model'), '--pairs', path.join(dir, 'pairs.jsonl'),
    '--batch-size', String(cfg.batch), '--steps', String(cfg.steps), '--warmup', String(cfg.warmup), '--threads', String(cfg.threads)], { encoding: 'utf8' });
  if (peer.status !== 0) throw new Error(peer.stderr);
  const p = JSON.parse(peer.stdout.trim().split('\n').at(-1)!);
  const info = runtimeInfo();
  console.log(`\nCPU DPO step (${shape}; libtorch ${info.libtorchVersion}; ${os.cpus()[0].model}; ${new Date().toISOString().slice(0, 10)})`);
  console.log('| implementation | ms/step (median) | tokens/s | peak RSS MiB |');
  console.log('|---|---|---|---|');
  console.log(`| torch-dpo (fused loss, cached reference) | ${o.ms_per_step.toFixed(0)} | ${o.tokens_per_second.toFixed(0)} | ${o.peak_rss_mib.toFixed(0)} |`);
  console.log(`| PyTorch eager (full logits, cached reference) | ${p.ms_per_step.toFixed(0)} | ${p.tokens_per_second.toFixed(0)} | ${p.peak_rss_mib.toFixed(0)} |`);
  console.log(`| ratio torch-dpo / PyTorch | ${(p.ms_per_step / o.ms_per_step).toFixed(2)}x faster | ${(o.tokens_per_second / p.tokens_per_second).toFixed(2)}x | ${(o.peak_rss_mib / p.peak_rss_mib).toFixed(2)}x |`);
  fs.rmSync(dir, { recursive: true, force: true });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
