// LoRA through the public API and the CLI: DPO with adapters on a tiny demo-config Llama (base weights untouched,
// reference = adapters off = the base model), PEFT checkpoints, resume, merge-lora, and option errors.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Model } from '../../lib/model';
import { DPOTrainer } from '../../lib/trainer/dpo_trainer';
import { SFTTrainer } from '../../lib/trainer/preference_trainers';
import { compareWeights, latest, makeModelDir, pairRecords, readWeights, runCli, tmpDir, writeJsonl } from './helpers/fixtures';

const work = tmpDir('lora');
let policyDir = '';
let data = '';

test.before(async () => {
  policyDir = await makeModelDir(path.join(work, 'policy'), 3);
  data = writeJsonl(path.join(work, 'pairs.jsonl'), pairRecords(4, 7));
});

/** Every tensor of a float32 safetensors file by name. */
function readSafetensors(file: string): Map<string, Float32Array> {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const out = new Map<string, Float32Array>();
  for (const [k, v] of Object.entries<any>(header)) {
    if (k === '__metadata__') continue;
    const bytes = buf.subarray(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1]);
    out.set(k, new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)));
  }
  return out;
}

/** A (2, T) right-padded batch of two texts with shifted labels over every next token. */
function batch(m: Model, texts: string[]) {
  const seqs = texts.map((s) => m.requireTokenizer().encode(s, { addSpecialTokens: true }));
  const rows = seqs.length;
  const T = Math.max(...seqs.map((s) => s.length));
  const ids = new Int32Array(rows * T);
  const mask = new Int32Array(rows * T);
  const labels = new Int32Array(rows * T).fill(-100);
  seqs.forEach((s, r) => s.forEach((t, i) => ((ids[r * T + i] = t), (mask[r * T + i] = 1), i + 1 < s.length && (labels[r * T + i] = s[i + 1]))));
  return { ids, mask, labels, rows, T };
}

const LORA = { r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj', 'down_proj'] };
const common = { perDeviceTrainBatchSize: 4, shuffle: false, loggingSteps: 1, learningRate: 2e-2, lrSchedulerType: 'constant' as const, beta: 0.5 };

async function train(opts: Record<string, unknown>): Promise<{ losses: number[]; metrics: Record<string, number>[] }> {
  const trainer = await DPOTrainer.create({ ...common, policy: policyDir, data, ...opts } as any);
  const metrics: Record<string, number>[] = [];
  try {
    for await (const m of trainer.train()) if (!('eval_loss' in m)) metrics.push(m);
  } finally {
    await trainer[Symbol.asyncDispose]();
  }
  return { losses: metrics.map((m) => m.loss), metrics };
}

test.serial('DPO with LoRA and no reference model: base weights untouched, adapters learn, loss falls, PEFT checkpoint', async (t) => {
  const out = path.join(work, 'run');
  const trainer = await DPOTrainer.create({ ...common, policy: policyDir, data, outputDir: out, maxSteps: 8, saveSteps: 0, lora: LORA });
  const losses: number[] = [];
  const first: Record<string, number>[] = [];
  try {
    const info = trainer.policy.adapters!;
    t.deepEqual(info.modules.slice(0, 3), ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj', 'model.layers.0.mlp.down_proj']);
    const c = trainer.policy.config;
    const D = c.head_dim ?? c.hidden_size / c.num_attention_heads;
    // r·(in + out) per module: q (H -> Hq·D), v (H -> Hkv·D), down (I -> H)
    const perLayer = 4 * (c.hidden_size + c.num_attention_heads * D) + 4 * (c.hidden_size + c.num_key_value_heads * D) + 4 * (c.intermediate_size + c.hidden_size);
    t.is(info.trainableParameters, perLayer * c.num_hidden_layers);
    for await (const m of trainer.train()) {
      losses.push(m.loss);
      if (first.length === 0) first.push(m);
    }
    // step 1 runs with B = 0: the policy is the base model, so its rewards against the adapters-off reference are 0
    t.true(Math.abs(first[0]['rewards/chosen']) < 1e-5 && Math.abs(first[0]['rewards/rejected']) < 1e-5, JSON.stringify(first[0]));
    t.true(Math.abs(first[0].loss - Math.log(2)) < 1e-5, `${first[0].loss}`);
    t.true(losses[losses.length - 1] < losses[0] - 0.05, `losses ${losses.join(', ')}`);

    // the reference (adapters off) equals a separately loaded base model; with adapters on the log-probs moved
    await using base = await Model.load(policyDir);
    const b = batch(base, ['I loved this film, truly.', 'Terrible food and slow service.']);
    const want = await base.sequenceLogps(b.ids, b.mask, b.labels, b.rows, b.T);
    const off = await trainer.policy.baseSequenceLogps(b.ids, b.mask, b.labels, b.rows, b.T);
    const on = await trainer.policy.sequenceLogps(b.ids, b.mask, b.labels, b.rows, b.T);
    t.deepEqual(Array.from(off.logps), Array.from(want.logps));
    t.true(Math.abs(on.logps[0] - want.logps[0]) > 1e-3, `${on.logps[0]} vs ${want.logps[0]}`);

    // the frozen base weights are bit-identical to the files they came from
    const saved = path.join(work, 'base-after');
    await trainer.policy.save(saved);
    t.true(compareWeights(readWeights(saved), readWeights(policyDir)).identical);
  } finally {
    await trainer[Symbol.asyncDispose]();
  }
  const ckpt = latest(out);
  t.is(path.basename(ckpt), 'checkpoint-8');
  for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'optimizer.pt', 'trainer_state.json']) t.true(fs.existsSync(path.join(ckpt, f)), f);
  t.false(fs.existsSync(path.join(ckpt, 'model.safetensors')));
  t.false(fs.existsSync(path.join(ckpt, 'merged')));
  const cfg = JSON.parse(fs.readFileSync(path.join(ckpt, 'adapter_config.json'), 'utf8'));
  t.like(cfg, { peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 4, lora_alpha: 8, lora_dropout: 0, bias: 'none', fan_in_fan_out: false });
  t.deepEqual(cfg.target_modules, LORA.targetModules);
  t.is(cfg.base_model_name_or_path, path.resolve(policyDir));
  const w = readSafetensors(path.join(ckpt, 'adapter_model.safetensors'));
  t.is(w.size, 2 * 3 * 2); // A and B of 3 modules in 2 layers
  const bKey = 'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight';
  t.true(w.has(bKey));
  t.true(w.get(bKey)!.some((x) => x !== 0), 'lora_B left zero');
});

test.serial('a resumed LoRA run ends with the adapter of an uninterrupted one', async (t) => {
  const full = path.join(work, 'full');
  await train({ outputDir: full, maxSteps: 4, saveSteps: 2, lora: LORA });
  const part = path.join(work, 'part');
  await train({ outputDir: part, maxSteps: 4, saveSteps: 2, lora: LORA, resume: path.join(full, 'checkpoint-2') });
  const a = readSafetensors(path.join(full, 'checkpoint-4', 'adapter_model.safetensors'));
  const b = readSafetensors(path.join(part, 'checkpoint-4', 'adapter_model.safetensors'));
  const cmp = compareWeights(b, a);
  t.true(cmp.maxRel < 1e-6, `maxRel ${cmp.maxRel}`);
  // and training did move the adapters between the two checkpoints
  const mid = readSafetensors(path.join(full, 'checkpoint-2', 'adapter_model.safetensors'));
  t.true(compareWeights(mid, a).maxRel > 1e-4);
});

test.serial('merge-lora CLI and saveMerged write a model whose log-probs equal the adapter model', async (t) => {
  const out = path.join(work, 'merged-run');
  await train({ outputDir: out, maxSteps: 3, saveSteps: 0, lora: LORA, saveMerged: true });
  const ckpt = latest(out);
  const cliOut = path.join(work, 'merged-cli');
  const r = runCli(['merge-lora', '--base', policyDir, '--adapter', ckpt, '--out', cliOut]);
  t.is(r.code, 0, r.stderr);
  t.true(fs.existsSync(path.join(cliOut, 'tokenizer.json')));
  t.true(compareWeights(readWeights(cliOut), readWeights(path.join(ckpt, 'merged'))).identical);

  await using withAdapter = await Model.load(policyDir);
  await withAdapter.loadAdapter(ckpt);
  await using merged = await Model.load(cliOut);
  t.is(merged.adapters, undefined);
  const b = batch(merged, ['The soup was cold and bland.', 'A wonderful, warm little cafe!']);
  const x = await withAdapter.sequenceLogps(b.ids, b.mask, b.labels, b.rows, b.T);
  const y = await merged.sequenceLogps(b.ids, b.mask, b.labels, b.rows, b.T);
  for (let i = 0; i < b.rows; i++) t.true(Math.abs(x.logps[i] - y.logps[i]) <= 1e-4 * Math.abs(x.logps[i]), `${x.logps[i]} vs ${y.logps[i]}`);
  // the merge changed the targeted weights only
  const before = readWeights(policyDir), after = readWeights(cliOut);
  t.false(compareWeights(new Map([['q', after.get('model.layers.0.self_attn.q_proj.weight')!]]), new Map([['q', before.get('model.layers.0.self_attn.q_proj.weight')!]])).identical);
  t.true(compareWeights(new Map([['k', after.get('model.layers.0.self_attn.k_proj.weight')!]]), new Map([['k', before.get('model.layers.0.self_attn.k_proj.weight')!]])).identical);
});

test.serial('train CLI --lora-* flags and the SFT trainer with lora', async (t) => {
  const out = path.join(work, 'cli-run');
  const r = runCli(['train', '--policy', policyDir, '--data', data, '--output', out, '--lora-r', '2', '--lora-alpha', '4', '--lora-targets', 'q_proj,o_proj', '--max-steps', '1', '--batch-size', '2', '--no-progress', '--no-report']);
  t.is(r.code, 0, r.stderr);
  const cfg = JSON.parse(fs.readFileSync(path.join(latest(out), 'adapter_config.json'), 'utf8'));
  t.like(cfg, { r: 2, lora_alpha: 4 });
  t.deepEqual(cfg.target_modules, ['q_proj', 'o_proj']);

  // a config file's lora object (PEFT names) merged with a --lora-* flag
  const cfgFile = path.join(work, 'lora-config.json');
  fs.writeFileSync(cfgFile, JSON.stringify({ lora: { r: 3, target_modules: ['k_proj'] } }));
  const out2 = path.join(work, 'cli-run-config');
  const r2 = runCli(['train', '--config', cfgFile, '--policy', policyDir, '--data', data, '--output', out2, '--lora-alpha', '6', '--max-steps', '1', '--batch-size', '2', '--no-progress', '--no-report']);
  t.is(r2.code, 0, r2.stderr);
  const cfg2 = JSON.parse(fs.readFileSync(path.join(latest(out2), 'adapter_config.json'), 'utf8'));
  t.like(cfg2, { r: 3, lora_alpha: 6 });
  t.deepEqual(cfg2.target_modules, ['k_proj']);

  const sftOut = path.join(work, 'sft-run');
  const trainer = await SFTTrainer.create({ policy: policyDir, data, outputDir: sftOut, maxSteps: 1, perDeviceTrainBatchSize: 2, lora: { r: 2 } });
  t.deepEqual(trainer.policy.adapters!.targetModules, ['q_proj', 'v_proj']); // PEFT's default for llama
  for await (const _ of trainer.train());
  await trainer[Symbol.asyncDispose]();
  t.true(fs.existsSync(path.join(latest(sftOut), 'adapter_model.safetensors')));
});

test.serial('bad LoRA options and calls give clear errors', async (t) => {
  const base = { policy: policyDir, data, outputDir: path.join(work, 'bad'), maxSteps: 1 };
  await t.throwsAsync(DPOTrainer.create({ ...base, lora: { r: 0 } }), { message: /Expected an integer in \[1, 65536\] for lora\.r but received 0/ });
  await t.throwsAsync(DPOTrainer.create({ ...base, lora: { dropout: 1 } }), { message: /Expected a number in \[0, 1\) for lora\.dropout but received 1/ });
  await t.throwsAsync(DPOTrainer.create({ ...base, lora: { rank: 4 } as any }), { message: /rank/ });
  await t.throwsAsync(DPOTrainer.create({ ...base, lora: { targetModules: ['qkv'] } }), { message: /LoRA target module 'qkv' matches no linear module .*down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj/ });
  await t.throwsAsync(DPOTrainer.create({ ...base, referenceFree: true, saveMerged: true }), { message: /saveMerged/ });
  // PEFT's field names are read too (a YAML config written for PEFT), and checked the same way
  await t.throwsAsync(DPOTrainer.create({ ...base, lora: { lora_dropout: 2 } as any }), { message: /for lora\.dropout but received 2/ });
  await using m = await Model.load(policyDir);
  await m.addLora({ r: 2 });
  await t.throwsAsync(m.addLora({ r: 2 }), { message: /already has LoRA adapters/ });
  await t.throwsAsync(m.loadAdapter(path.join(work, 'nowhere')), { message: /adapter_config\.json: not found/ });
  await m.mergeAdapters();
  t.is(m.adapters, undefined);
  await t.throwsAsync(m.mergeAdapters(), { message: /the model has none/ });
});
