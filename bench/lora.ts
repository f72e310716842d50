// CPU benchmark: one DPO training step (reference-free sigmoid loss, AdamW) of full fine-tuning vs LoRA on the same
// random-weight Llama and batch: median step time, trainable parameters, optimizer state (the size of the saved
// AdamW state file, i.e. both moments of every trained tensor), and peak RSS. Each variant runs in its own process.
//   node dist/bench/lora.js [--hidden 256 --layers 4 --vocab 4096 --seq 128 --batch 2 --steps 5 --threads 2]
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Model } from '../lib/model';
import { arg, benchLlamaConfig, randomTrainerBatch } from './common';
import { callNative } from '../lib/native';
import { addon, setThreads } from '../lib/runtime';
import { trainerConfig } from '../lib/trainer/dpo_trainer';
import { resolveDPOOptions } from '../lib/trainer/options';


const cfg = { hidden: arg('hidden', 256), layers: arg('layers', 4), vocab: arg('vocab', 4096), seq: arg('seq', 128), batch: arg('batch', 2), steps: arg('steps', 5), warmup: 1, threads: arg('threads', os.availableParallelism()) };

const VARIANTS: Record<string, { lora?: { r: number; alpha: number; targetModules: string[] } }> = {
  full: {},
  'lora r=8 q,v': { lora: { r: 8, alpha: 16, targetModules: ['q_proj', 'v_proj'] } },
  'lora r=16 all linear': { lora: { r: 16, alpha: 32, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] } },
};

function modelConfig() {
  return benchLlamaConfig(cfg);
}

async function child(variant: string, dir: string): Promise<void> {
  setThreads(cfg.threads);
  const v = VARIANTS[variant];
  await using model = await Model.create(modelConfig(), { seed: 1 });
  const info = v.lora ? await model.addLora(v.lora, 1) : undefined;
  const opts = resolveDPOOptions({ policy: 'unused', data: 'unused', outputDir: 'unused', referenceFree: true });
  const trainer = addon().createTrainer(model.native, JSON.stringify(trainerConfig(opts)));
  const rows = 2 * cfg.batch, T = cfg.seq;
  const { ids, mask, labels } = randomTrainerBatch(rows, T, cfg.vocab, 7);
  const times: number[] = [];
  for (let i = 0; i < cfg.warmup + cfg.steps; i++) {
    const t0 = process.hrtime.bigint();
    await callNative('accumulate', () => trainer.accumulate(ids, mask, labels, null, rows, T, 1, false, null));
    await callNative('step', () => trainer.step(1e-4, 1));
    if (i >= cfg.warmup) times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  const statePath = path.join(dir, `${variant.replace(/[^a-z0-9]+/g, '_')}.pt`);
  await callNative('saveState', () => trainer.saveState(statePath));
  trainer.dispose();
  times.sort((a, b) => a - b);
  const total = model.config.torch_dpo.num_parameters as number;
  console.log(JSON.stringify({
    ms_per_step: times[Math.floor(times.length / 2)],
    trainable: info ? info.trainableParameters : total,
    total,
    optimizer_state_bytes: fs.statSync(statePath).size,
    peak_rss_mib: process.resourceUsage().maxRSS / 1024,
  }));
}

async function main(): Promise<void> {
  const c = process.argv.indexOf('--child');
  if (c > 0) return child(process.argv[c + 1], process.argv[c + 2]);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tdpo-bench-lora-'));
  const fmtMiB = (b: number) => (b / 2 ** 20).toFixed(2);
  console.log(`Llama hidden ${cfg.hidden}, ${cfg.layers} layers, vocab ${cfg.vocab}, ${cfg.batch} pairs x ${cfg.seq} tokens, AdamW, ${cfg.threads} threads, median of ${cfg.steps} steps after ${cfg.warmup} warm-up`);
  console.log('| variant | trainable params | % of model | optimizer state MiB | ms/step (median) | peak RSS MiB |');
  console.log('|---|---|---|---|---|---|');
  try {
    for (const variant of Object.keys(VARIANTS)) {
      const r = spawnSync(process.execPath, [__filename, ...process.argv.slice(2), '--child', variant, dir], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`${variant} failed: ${r.stderr}`);
      const m = JSON.parse(r.stdout.trim().split('\n').pop()!);
      console.log(`| ${variant} | ${m.trainable.toLocaleString('en-US')} | ${((100 * m.trainable) / m.total).toFixed(2)} | ${fmtMiB(m.optimizer_state_bytes)} | ${m.ms_per_step.toFixed(0)} | ${m.peak_rss_mib.toFixed(0)} |`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
