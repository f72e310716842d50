// Model through the public TS API: log-probs and greedy generation against the independent float64 reference
// (test/reference/reference.py), save/load round trip, lifetimes, CLI inspection commands, bad input.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Model } from '../../lib/model';
import { native } from '../../lib/native';
import { havePythonTorch, makeModelDir, pairRecords, PYTHON, referenceForward, ROOT, runCli, tmpDir, writeJsonl } from './helpers/fixtures';

const work = tmpDir('model');

function fixture(name: string, args: string[]): string {
  const dir = path.join(work, name);
  const r = spawnSync(PYTHON, [path.join(ROOT, 'test/reference/make_fixture.py'), '--out', dir, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  return dir;
}

function reference(dir: string, input: unknown): any {
  return referenceForward('reference.py', dir, input, work);
}

const SEQS = [[3, 17, 42, 8, 91, 5, 60], [11, 2], [7, 7, 7, 30, 64, 12, 1, 0, 95, 44, 18]];

for (const [name, args] of [
  ['llama-gqa-untied', ['--arch', 'llama', '--kv-heads', '2', '--rope-scaling', 'llama3']],
  ['qwen2-tied-bf16-sharded', ['--arch', 'qwen2', '--tied', '--dtype', 'bfloat16', '--shards', '3', '--kv-heads', '1', '--transformers', '5']],
  ['gpt2', ['--arch', 'gpt2']],
] as const) {
  test.serial(`${name}: token log-probs and greedy generation equal the float64 reference`, async (t) => {
    if (!havePythonTorch(t)) return t.pass();
    const dir = fixture(name, [...args]);
    const ref = reference(dir, { sequences: SEQS, generate: { prompts: [SEQS[0].slice(0, 3), SEQS[2].slice(0, 5)], max_new_tokens: 6 } });
    await using m = await Model.load(dir);
    const got = await m.tokenLogps(SEQS);
    let worst = 0;
    SEQS.forEach((s, i) => {
      const sum = Array.from(got[i]).reduce((a, b) => a + b, 0);
      const want = ref.token_logps[i].reduce((a: number, b: number) => a + b, 0);
      worst = Math.max(worst, Math.abs(sum - want));
      t.true(Math.abs(sum - want) < 1e-4, `sequence ${i}: ${sum} vs ${want}`);
    });
    t.log(`worst per-sequence |Δ log p| = ${worst.toExponential(2)}`);
    const greedy = await m.generate([SEQS[0].slice(0, 3), SEQS[2].slice(0, 5)], { maxNewTokens: 6, eosTokenIds: [] });
    t.deepEqual(greedy, ref.greedy);
  });
}

test.serial('save then load gives identical log-probs; dispose is idempotent; use after dispose throws', async (t) => {
  const dir = await makeModelDir(path.join(work, 'demo-a'), 4);
  const m = await Model.load(dir);
  const before = await m.tokenLogps(SEQS.map((s) => s.map((x) => x % 50)));
  await m.save(path.join(work, 'demo-b'));
  t.true(fs.existsSync(path.join(work, 'demo-b', 'tokenizer.json')), 'tokenizer files are copied');
  await using m2 = await Model.load(path.join(work, 'demo-b'));
  const after = await m2.tokenLogps(SEQS.map((s) => s.map((x) => x % 50)));
  t.deepEqual(after, before);
  m.dispose();
  m.dispose();
  t.true(m.disposed);
  await t.throwsAsync(m.tokenLogps([[1, 2]]), { message: /Model was disposed/ });
  const h = m2.native;
  t.throws(() => (h.tokenLogps as any)(new Int32Array(2)), { instanceOf: TypeError, message: /Expected 4 argument/ });
  t.throws(() => (h.tokenLogps as any)([1, 2], new Int32Array(2), 1, 2), { message: /Expected an Int32Array for inputIds but received Array/ });
  t.throws(() => (native().createTrainer as any)({}, '{}'), { message: /Expected a NativeModel for policy/ });
  await t.throwsAsync(m2.tokenLogps([[1, 99]]), { message: /token ids in \[0, 50\)/ });
});

test.serial('CLI tokenize / logps / generate print the documented JSON lines', async (t) => {
  const dir = await makeModelDir(path.join(work, 'cli-model'), 5);
  const data = writeJsonl(path.join(work, 'cli.jsonl'), pairRecords(3, 2));
  const tok = runCli(['tokenize', '--model', dir, '--data', data]);
  t.is(tok.code, 0, tok.stderr);
  const rows = tok.stdout.trim().split('\n').map((l) => JSON.parse(l));
  t.deepEqual(rows.map((r) => r.index), [0, 1, 2]);
  t.true(rows.every((r) => r.prompt_ids[0] === 1 && r.chosen_ids.at(-1) === 2 && r.rejected_ids.at(-1) === 2), 'BOS first, EOS appended');
  const lp = runCli(['logps', '--model', dir, '--data', data, '--batch-size', '2']);
  t.is(lp.code, 0, lp.stderr);
  const l = lp.stdout.trim().split('\n').map((x) => JSON.parse(x));
  t.deepEqual(l.map((r) => r.index), [0, 1, 2]);
  for (let i = 0; i < 3; i++) {
    t.is(l[i].chosen_token_logps.length, rows[i].chosen_ids.length);
    const sum = l[i].chosen_token_logps.reduce((a: number, b: number) => a + b, 0);
    t.true(Math.abs(sum - l[i].chosen_logp) < 1e-9);
  }
  // the summed log-prob equals the Model API's per-token values on the concatenated sequence
  await using m = await Model.load(dir);
  const [tl] = await m.tokenLogps([rows[1].prompt_ids.concat(rows[1].chosen_ids)]);
  const want = Array.from(tl.slice(rows[1].prompt_ids.length - 1)).reduce((a, b) => a + b, 0);
  t.true(Math.abs(want - l[1].chosen_logp) < 1e-5, `${want} vs ${l[1].chosen_logp}`);
  const g = runCli(['generate', '--model', dir, '--prompt', 'review of the film :', '--max-new-tokens', '5', '--json']);
  t.is(g.code, 0, g.stderr);
  const gj = JSON.parse(g.stdout);
  t.deepEqual(Object.keys(gj).sort(), ['ids', 'prompt_ids', 'text']);
  t.true(gj.ids.length >= 1 && gj.ids.length <= 5);
  const g2 = runCli(['generate', '--model', dir, '--prompt', 'review of the film :', '--max-new-tokens', '5', '--json']);
  t.is(g2.stdout, g.stdout, 'greedy generation is deterministic');
});

test.serial('bad model directories give errors that name the file', async (t) => {
  await t.throwsAsync(Model.load(path.join(work, 'nope')), { message: /nope\/config\.json: not found/ });
  const dir = await makeModelDir(path.join(work, 'trunc'), 6);
  const f = path.join(dir, 'model.safetensors');
  fs.truncateSync(f, Math.floor(fs.statSync(f).size / 2));
  await t.throwsAsync(Model.load(dir), { message: /model\.safetensors/ });
  const cfgDir = await makeModelDir(path.join(work, 'badcfg'), 6);
  fs.writeFileSync(path.join(cfgDir, 'config.json'), JSON.stringify({ model_type: 'bert', vocab_size: 50 }));
  await t.throwsAsync(Model.load(cfgDir), { message: /bert/ });
  await t.throwsAsync(Model.load(dir, { device: 'tpu' as any }), { message: "Expected 'cpu', 'cuda' or 'cuda:N' for device but received \"tpu\"" });
  await t.throwsAsync(Model.load(dir, { dtype: 'bfloat16' }), { message: /'float32' on device 'cpu' for dtype/ });
});
