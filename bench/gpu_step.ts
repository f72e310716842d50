// The GPU benchmark of issue "GPU performance": one DPO training step through torch-dpo's public API (cached reference,
// AdamW, clipping at 1.0) vs the Python peers of bench/peer/hf_dpo_step.py (transformers + PyTorch: reference forward
// every step as TRL's default, cached reference eager, cached + Liger's fused DPO loss, cached + torch.compile), on
// the same random-weight checkpoint, pairs, dtype and device, each in its own process. Prints a table of ms/step,
// tokens/s, peak memory above the weights, time to the first step and the reference precompute rate, with ratios.
//   node dist/bench/gpu_step.js [--preset llama-1b|small|tiny] [--device cuda|cpu] [--dtype bfloat16|float32] [--pairs-per-step 4]
//       [--seq 1024] [--prompt 256] [--steps 10] [--warmup 3] [--peers ref-forward,cached,liger,compile] [--python python3]
//       [--one-rank yes|no] [--activation-checkpointing yes|no]
// torch-dpo also runs as a data-parallel group of one (WORLD_SIZE=1; NCCL on CUDA builds with it, else gloo): its row
// against the plain torch-dpo row is the distributed path's cost; and with activation checkpointing (memory vs time).
// Default: the shape (Llama-3.2-1B: vocab 128256, hidden 2048, 16 layers, 32 heads / 8 KV heads, MLP 8192,
// tied embeddings; 4 pairs × 1024 tokens, 256 prompt tokens) in bfloat16 on CUDA. `--preset tiny --device cpu
// --dtype float32` runs the same pipeline anywhere (it is how the script itself is tested on CPU).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { arg, flag, freePort, writePlaceholderTokenizer, writeRandomPairs } from './common';
import { resolveDistBackend } from '../lib/trainer/distributed';
import { Model } from '../lib/model';
import { DPOTrainer } from '../lib/trainer/dpo_trainer';
import { precomputeReference } from '../lib/trainer/precompute';
import { cudaMemory, runtimeInfo } from '../lib/runtime';
import type { Device, DType } from '../lib/validate';

const PRESETS: Record<string, Record<string, unknown>> = {
  'llama-1b': { vocab_size: 128256, hidden_size: 2048, intermediate_size: 8192, num_hidden_layers: 16, num_attention_heads: 32, num_key_value_heads: 8, tie_word_embeddings: true, rope_theta: 500000 },
  small: { vocab_size: 8192, hidden_size: 256, intermediate_size: 688, num_hidden_layers: 4, num_attention_heads: 8, num_key_value_heads: 4, tie_word_embeddings: false, rope_theta: 10000 },
  tiny: { vocab_size: 2048, hidden_size: 128, intermediate_size: 352, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, tie_word_embeddings: true, rope_theta: 10000 },
};
const preset = flag('preset', 'llama-1b');
const device = flag('device', 'cuda') as Device;
const dtype = flag('dtype', 'bfloat16') as DType;
const cfg = { pairs: arg('pairs-per-step', 4), seq: arg('seq', 1024), prompt: arg('prompt', 256), steps: arg('steps', 10), warmup: arg('warmup', 3) };
const peers = flag('peers', 'ref-forward,cached,liger,compile').split(',').filter(Boolean);
const python = flag('python', 'python3');
// also run torch-dpo as a data-parallel group of one (WORLD_SIZE=1: NCCL on CUDA builds that have it, else gloo) to
// measure what the distributed path costs (issue "Scale-out": < 3%)
const oneRank = flag('one-rank', 'yes') !== 'no';
// also run torch-dpo with activation checkpointing (its memory and time against the plain row)
const withCheckpointing = flag('activation-checkpointing', 'yes') !== 'no';

async function prepare(dir: string): Promise<void> {
  const p = PRESETS[preset];
  if (!p) throw new Error(`Expected one of ${Object.keys(PRESETS).join(', ')} for --preset but received ${preset}`);
  const config = { architectures: ['LlamaForCausalLM'], model_type: 'llama', max_position_embeddings: 4096, rms_norm_eps: 1e-5, hidden_act: 'silu', bos_token_id: 1, eos_token_id: 2, pad_token_id: 0, torch_dtype: 'float32', ...p };
  {
    await using m = await Model.create(config, { seed: 1 });
    await m.save(path.join(dir, 'model'), { dtype });
  }
  writePlaceholderTokenizer(path.join(dir, 'model'), Number(p.vocab_size));
  writeRandomPairs(path.join(dir, 'pairs.jsonl'), cfg.pairs * 4, cfg.seq, cfg.prompt, Number(p.vocab_size));
}

async function torchDpoChild(dir: string): Promise<void> {
  const model = path.join(dir, 'model');
  const pairs = path.join(dir, 'pairs.jsonl');
  const group = process.env.WORLD_SIZE !== undefined;
  const ckpt = process.env.TORCH_DPO_BENCH_CHECKPOINTING === '1';
  const variant = group ? `torch-dpo, group of 1 (${resolveDistBackend('auto', device, runtimeInfo().distBackends)})` : ckpt ? 'torch-dpo, activation checkpointing' : 'torch-dpo';
  const cache = path.join(dir, group ? 'cache-group' : ckpt ? 'cache-ckpt' : 'cache');
  const cuda = device !== 'cpu';
  const tokensPerStep = cfg.pairs * 2 * cfg.seq;
  let t0 = Date.now();
  await precomputeReference({ reference: model, data: pairs, cache, batchSize: cfg.pairs, device, dtype, maxLength: 1 << 20, maxPromptLength: (1 << 20) - 1 });
  const precomputeTps = (cfg.pairs * 4 * 2 * cfg.seq) / ((Date.now() - t0) / 1000);
  const tLoad = Date.now();
  const t = await DPOTrainer.create({
    policy: model, refCache: cache, data: pairs, outputDir: path.join(dir, 'out'), perDeviceTrainBatchSize: cfg.pairs, maxSteps: cfg.warmup + cfg.steps,
    loggingSteps: 1, saveSteps: 0, shuffle: false, learningRate: 1e-6, maxGradNorm: 1, maxLength: 1 << 20, maxPromptLength: (1 << 20) - 1, device, dtype,
    activationCheckpointing: ckpt,
  });
  const weights = cuda ? cudaMemory(device, true).allocatedBytes : 0;
  const stamps: number[] = [];
  let firstStep = 0;
  let lossFirst = 0;
  t0 = Date.now();
  for await (const m of t.train()) {
    const now = Date.now();
    if (m.step === 1) {
      firstStep = (now - tLoad) / 1000;
      lossFirst = m.loss;
    }
    if (m.step > cfg.warmup) stamps.push(now - t0);
    t0 = now;
  }
  const peak = cuda ? cudaMemory(device).peakAllocatedBytes : 0;
  await t[Symbol.asyncDispose]();
  const sorted = [...stamps].sort((a, b) => a - b);
  const total = stamps.reduce((a, b) => a + b, 0) / 1000;
  console.log(JSON.stringify({
    variant, ms_per_step: sorted[Math.floor(sorted.length / 2)], tokens_per_second: (tokensPerStep * stamps.length) / total, first_step_s: firstStep, loss_first: lossFirst,
    precompute_tokens_per_second: precomputeTps, ...(cuda ? { peak_above_weights_gib: (peak - weights) / 2 ** 30 } : { peak_rss_mib: process.resourceUsage().maxRSS / 1024 }),
  }));
}

function lastJson(out: string): Record<string, any> {
  const line = out.trim().split('\n').filter((l) => l.startsWith('{')).at(-1);
  return line ? JSON.parse(line) : { error: 'no result line' };
}

async function main(): Promise<void> {
  if (process.argv[2] === '--child') return torchDpoChild(process.argv[3]);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdpo-gpu-bench-'));
  await prepare(dir);
  const threads = String(os.availableParallelism());
  const results: Record<string, any>[] = [];
  // one torch-dpo child process per variant (extra environment: what the child's variant is)
  const child = (variant: string, extra: Record<string, string>) => {
    const r = spawnSync(process.execPath, [__filename, '--child', dir, ...process.argv.slice(2)], { encoding: 'utf8', env: { ...process.env, TORCH_DPO_THREADS: threads, ...extra } });
    if (r.status !== 0) process.stderr.write(r.stderr);
    results.push(r.status === 0 ? lastJson(r.stdout) : { variant, error: `failed (exit ${r.status}; its stderr is above)` });
  };
  child('torch-dpo', {});
  if (withCheckpointing) child('torch-dpo, activation checkpointing', { TORCH_DPO_BENCH_CHECKPOINTING: '1' });
  if (oneRank) child('torch-dpo, group of 1', { WORLD_SIZE: '1', RANK: '0', LOCAL_RANK: '0', MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(await freePort()) });
  for (const v of peers) {
    const r = spawnSync(python, [path.join(__dirname, '..', '..', 'bench', 'peer', 'hf_dpo_step.py'), '--model', path.join(dir, 'model'), '--pairs', path.join(dir, 'pairs.jsonl'), '--variant', v,
      '--batch-size', String(cfg.pairs), '--steps', String(cfg.steps), '--warmup', String(cfg.warmup), '--device', device, '--dtype', dtype, '--threads', threads], { encoding: 'utf8' });
    results.push(r.status === 0 ? lastJson(r.stdout) : { variant: v, error: (r.stderr || String(r.error)).trim().split('\n').at(-1) });
  }
  const info = runtimeInfo();
  const cuda = device !== 'cpu';
  const memHead = cuda ? 'peak GiB above weights' : 'peak RSS MiB';
  console.log(`\nDPO step: ${preset} (${dtype}, ${device}), ${cfg.pairs} pairs × ${cfg.seq} tokens (${cfg.prompt} prompt), cached reference unless noted; ` +
    `median of ${cfg.steps} steps after ${cfg.warmup}; libtorch ${info.libtorchVersion}; ${new Date().toISOString().slice(0, 10)}`);
  console.log(`| implementation | ms/step | tokens/s | ${memHead} | first step s | ref precompute tokens/s | torch-dpo speed-up |`);
  console.log('|---|---|---|---|---|---|---|');
  const base = results[0];
  for (const r of results) {
    if (r.error) {
      console.log(`| ${r.variant} | — | — | — | — | — | ${r.error} |`);
      continue;
    }
    const mem = cuda ? r.peak_above_weights_gib?.toFixed(2) : r.peak_rss_mib?.toFixed(0);
    const ratio = r === base || base.error ? '' : `${(r.ms_per_step / base.ms_per_step).toFixed(2)}×`;
    console.log(`| ${r.variant} | ${r.ms_per_step.toFixed(1)} | ${(r.tokens_per_second / 1000).toFixed(1)}k | ${mem ?? '—'} | ${r.first_step_s?.toFixed(1) ?? '—'} | ${r.precompute_tokens_per_second ? (r.precompute_tokens_per_second / 1000).toFixed(1) + 'k' : '—'} | ${ratio} |`);
  }
  const losses = results.filter((r) => !r.error && r.loss_first !== undefined).map((r) => `${r.variant} ${r.loss_first.toFixed(4)}`);
  const g = results.find((r) => String(r.variant).startsWith('torch-dpo, group of 1') && !r.error);
  if (g && !base.error) {
    const change = (g.tokens_per_second / base.tokens_per_second - 1) * 100;
    console.log(`\n${g.variant}: tokens/s ${change >= 0 ? '+' : ''}${change.toFixed(1)}% against no group (target: no worse than -3%)`);
  }
  console.log(`\nfirst-step losses (same data and weights, so they should agree): ${losses.join(', ')}`);
  fs.rmSync(dir, { recursive: true, force: true });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
