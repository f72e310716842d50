// Reward models: one SGD step of `torch-dpo reward` against an independent float64 autograd gradient
// (test/reference/reward_ref.py), a short AdamW run on the demo task, `torch-dpo score` against Model.score and the
// float64 rewards, and clear errors for bad checkpoints and options.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Model } from '../../lib/model';
import { RewardMetrics, rewardOptions, RewardTrainer } from '../../lib/trainer/reward_trainer';
import { havePythonTorch, latest, makeModelDir, pairRecords, PYTHON, ROOT, runCli, tmpDir, writeJsonl } from './helpers/fixtures';

const work = tmpDir('reward');
let causalDir = '';
let rmDir = ''; // a reward model made from causalDir (score head drawn with seed 5)
let trained = ''; // the checkpoint of the AdamW run
let data = '';

function reference(args: string[]): any {
  const py = spawnSync(PYTHON, [path.join(ROOT, 'test/reference/reward_ref.py'), ...args], { encoding: 'utf8' });
  if (py.status !== 0) throw new Error(`reward_ref.py failed: ${py.stderr}`);
  return JSON.parse(py.stdout);
}

function tokenized(model: string, file: string, out: string): string {
  const tok = runCli(['tokenize', '--model', model, '--data', file]);
  if (tok.code !== 0) throw new Error(tok.stderr);
  fs.writeFileSync(out, tok.stdout);
  return out;
}

test.before(async () => {
  causalDir = await makeModelDir(path.join(work, 'causal'), 3);
  data = writeJsonl(path.join(work, 'pairs.jsonl'), pairRecords(8, 7));
  const rm = await Model.load(causalDir, { head: 'score', seed: 5 });
  try {
    rmDir = path.join(work, 'rm-init');
    await rm.save(rmDir);
  } finally {
    rm.dispose();
  }
});

test.serial('a causal LM loads as a reward model: lm_head dropped, score head drawn from the seed, saved as …ForSequenceClassification', async (t) => {
  const cfg = JSON.parse(fs.readFileSync(path.join(rmDir, 'config.json'), 'utf8'));
  t.deepEqual(cfg.architectures, ['LlamaForSequenceClassification']);
  t.deepEqual(cfg.id2label, { 0: 'LABEL_0' });
  t.deepEqual(cfg.label2id, { LABEL_0: 0 });
  t.true(fs.existsSync(path.join(rmDir, 'tokenizer.json')));
  const a = await Model.load(rmDir);
  const b = await Model.load(causalDir, { head: 'score', seed: 5 });
  const c = await Model.load(causalDir, { head: 'score', seed: 6 });
  try {
    t.true(a.isRewardModel);
    const texts = [{ prompt: 'Review of the soup:', completion: ' great taste' }, 'just a text'];
    const ra = await a.score(texts), rb = await b.score(texts), rc = await c.score(texts);
    t.deepEqual(ra, rb); // same seed, same head; saved and reloaded exactly
    t.notDeepEqual(ra, rc);
    t.true(ra.every(Number.isFinite));
    await t.throwsAsync(a.tokenLogps([[1, 2, 3]]), { message: /needs a language-model head, but this model is a LlamaForSequenceClassification/ });
  } finally {
    a.dispose();
    b.dispose();
    c.dispose();
  }
});

test.serial('per-record "margin" fields: one SGD step reproduces the float64 gradient with those margins (records without one take --margin)', (t) => {
  if (!havePythonTorch(t)) return t.pass();
  const out = path.join(work, 'sgd-record-margins');
  const six = writeJsonl(path.join(work, 'six-m.jsonl'), pairRecords(6, 11));
  const tok = tokenized(rmDir, six, path.join(work, 'six-m.tok.jsonl'));
  const own = [0.5, -0.25, 1.0, undefined, 0.75, undefined]; // two records without a margin: --margin 0.3 applies
  const lines = fs.readFileSync(tok, 'utf8').trim().split('\n').map((l, i) => {
    const { index: _index, ...r } = JSON.parse(l);
    return JSON.stringify(own[i] === undefined ? r : { ...r, margin: own[i] });
  });
  const withMargins = path.join(work, 'six-m.margins.jsonl');
  fs.writeFileSync(withMargins, lines.join('\n') + '\n');
  const r = runCli(['reward', '--policy', rmDir, '--data', withMargins, '--optimizer', 'sgd', '--learning-rate', '1.0', '--batch-size', '6', '--margin', '0.3',
    '--max-steps', '1', '--no-shuffle', '--max-grad-norm', '0', '--logging-steps', '1', '--output', out, '--no-progress', '--no-report']);
  t.is(r.code, 0, r.stderr);
  const res = reference(['--model', rmDir, '--pairs', tok, '--after', latest(out), '--margins', own.map((m) => m ?? 0.3).join(',')]);
  const logged = JSON.parse(fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n')[0]);
  t.log(`float64 loss ${res.loss}, torch-dpo loss ${logged.loss}; gradient rel. error ${res.rel_err.toExponential(2)}`);
  t.true(res.rel_err < 1e-4, `relative gradient error ${res.rel_err}`);
  t.true(Math.abs(logged.loss - res.loss) <= 1e-5 * Math.max(1, Math.abs(res.loss)), `loss ${logged.loss} vs ${res.loss}`);
  // a non-numeric margin is an error naming the file, line and field
  fs.writeFileSync(withMargins, lines[0].replace(/"margin":0.5/, '"margin":"big"') + '\n');
  const bad = runCli(['reward', '--policy', rmDir, '--data', withMargins, '--output', path.join(work, 'bad-margin'), '--max-steps', '1', '--no-progress', '--no-report']);
  t.not(bad.code, 0);
  t.regex(bad.stderr, /six-m\.margins\.jsonl:1: Expected a finite number for margin but received "big"/);
});

for (const [center, margin] of [[0, 0], [0.1, 0.5]]) {
  test.serial(`torch-dpo reward --optimizer sgd --learning-rate 1, one step, reproduces a float64 autograd gradient (center ${center}, margin ${margin})`, (t) => {
    if (!havePythonTorch(t)) return t.pass();
    const out = path.join(work, `sgd-${center}`);
    const six = writeJsonl(path.join(work, 'six.jsonl'), pairRecords(6, 11));
    const r = runCli(['reward', '--policy', rmDir, '--data', six, '--optimizer', 'sgd', '--learning-rate', '1.0', '--batch-size', '6',
      '--max-steps', '1', '--no-shuffle', '--max-grad-norm', '0', '--logging-steps', '1', '--output', out, '--no-progress', '--no-report',
      ...(center > 0 ? ['--center-rewards-coefficient', String(center)] : []), ...(margin !== 0 ? ['--margin', String(margin)] : [])]);
    t.is(r.code, 0, r.stderr);
    const tok = tokenized(rmDir, six, path.join(work, `six-${center}.tok.jsonl`));
    const res = reference(['--model', rmDir, '--pairs', tok, '--after', latest(out), '--center', String(center), '--margins', Array(6).fill(margin).join(',')]);
    const logged = JSON.parse(fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n')[0]);
    t.log(`float64 loss ${res.loss}, torch-dpo loss ${logged.loss}; gradient rel. error ${res.rel_err.toExponential(2)} (worst ${res.worst} ${res.max_tensor_rel_err.toExponential(2)}), |g| ${res.grad_norm.toFixed(4)}`);
    t.true(res.grad_norm > 1e-3, 'the gradient must not be trivial');
    t.true(res.rel_err < 1e-4, `relative gradient error ${res.rel_err}`);
    t.true(Math.abs(logged.loss - res.loss) <= 1e-5 * Math.max(1, Math.abs(res.loss)), `loss ${logged.loss} vs ${res.loss}`);
    // TRL's metric names, computed from the float64 rewards
    const acc = res.chosen.filter((c: number, i: number) => c > res.rejected[i]).length / 6;
    const meanMargin = res.chosen.reduce((s: number, c: number, i: number) => s + c - res.rejected[i], 0) / 6;
    t.is(logged.accuracy, acc);
    t.true(Math.abs(logged.margin - meanMargin) < 1e-5, `margin ${logged.margin} vs ${meanMargin}`);
    t.false('rewards/accuracies' in logged);
    t.false('logps/chosen' in logged);
    const saved = JSON.parse(fs.readFileSync(path.join(latest(out), 'config.json'), 'utf8'));
    t.deepEqual(saved.architectures, ['LlamaForSequenceClassification']);
  });
}

test.serial('RewardTrainer: a short AdamW run on demo pairs (starting from the causal LM) lowers the loss and raises accuracy', async (t) => {
  const out = path.join(work, 'adamw');
  const trainer = await RewardTrainer.create({
    policy: causalDir, data, outputDir: out, perDeviceTrainBatchSize: 8, maxSteps: 12, shuffle: false, loggingSteps: 1, saveSteps: 0,
    learningRate: 3e-3, lrSchedulerType: 'constant', seed: 5,
  });
  const ms: RewardMetrics[] = [];
  try {
    for await (const m of trainer.train()) if (!('eval_loss' in m)) ms.push(m as unknown as RewardMetrics);
  } finally {
    await trainer[Symbol.asyncDispose]();
  }
  t.is(ms.length, 12);
  t.log(`loss ${ms.map((m) => m.loss.toFixed(4)).join(' -> ')}; accuracy ${ms[0].accuracy} -> ${ms[11].accuracy}; margin ${ms[0].margin.toFixed(4)} -> ${ms[11].margin.toFixed(4)}`);
  t.true(ms.every((m) => Number.isFinite(m.loss) && Number.isFinite(m.grad_norm)));
  t.true(ms[11].loss < 0.5 * ms[0].loss, `loss ${ms[0].loss} -> ${ms[11].loss}`);
  t.true(ms[11].accuracy > ms[0].accuracy && ms[11].accuracy === 1, `accuracy ${ms[0].accuracy} -> ${ms[11].accuracy}`);
  t.true(ms[11].margin > ms[0].margin);
  for (const m of ms) t.true(Math.abs(m.margin - (m['rewards/chosen'] - m['rewards/rejected'])) < 1e-9);
  trained = latest(out);
  t.deepEqual(JSON.parse(fs.readFileSync(path.join(trained, 'config.json'), 'utf8')).architectures, ['LlamaForSequenceClassification']);
});

test.serial('torch-dpo score prints the rewards of Model.score and of the float64 reference', async (t) => {
  if (!trained) return t.fail('needs the AdamW run');
  const r = runCli(['score', '--model', trained, '--data', data, '--batch-size', '3']);
  t.is(r.code, 0, r.stderr);
  const rows = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
  t.is(rows.length, 8);
  t.deepEqual(rows.map((x) => x.line), [1, 2, 3, 4, 5, 6, 7, 8]);
  const recs = pairRecords(8, 7);
  const m = await Model.load(trained);
  try {
    const chosen = await m.score(recs.map((x) => ({ prompt: x.prompt, completion: x.chosen })));
    const rejected = await m.score(recs.map((x) => ({ prompt: x.prompt, completion: x.rejected })), { batchSize: 5 });
    rows.forEach((x, i) => {
      t.true(Math.abs(x.chosen - chosen[i]) < 1e-5 && Math.abs(x.rejected - rejected[i]) < 1e-5, `line ${i + 1}`);
      t.is(x.margin, x.chosen - x.rejected);
    });
    // prompt + completion records: {line, reward}
    const single = writeJsonl(path.join(work, 'single.jsonl'), recs.slice(0, 3).map((x) => ({ prompt: x.prompt, completion: x.rejected })));
    const s = runCli(['score', '--model', trained, '--data', single]);
    t.is(s.code, 0, s.stderr);
    const srows = s.stdout.trim().split('\n').map((l) => JSON.parse(l));
    t.deepEqual(srows.map((x) => Object.keys(x)), [['line', 'reward'], ['line', 'reward'], ['line', 'reward']]);
    srows.forEach((x, i) => t.true(Math.abs(x.reward - rejected[i]) < 1e-5));
  } finally {
    m.dispose();
  }
  if (!havePythonTorch(t)) return;
  const ref = reference(['--model', trained, '--pairs', tokenized(trained, data, path.join(work, 'pairs.tok.jsonl'))]);
  let worst = 0;
  rows.forEach((x, i) => (worst = Math.max(worst, Math.abs(x.chosen - ref.chosen[i]), Math.abs(x.rejected - ref.rejected[i]))));
  const scale = Math.max(...ref.chosen.map(Math.abs), ...ref.rejected.map(Math.abs));
  t.log(`score vs float64 rewards: max abs diff ${worst.toExponential(2)} (rewards up to ${scale.toFixed(3)})`);
  t.true(worst <= 1e-4 * Math.max(1, scale), `max diff ${worst}`);
});

test.serial('bad checkpoints and options give clear errors naming the file and field', async (t) => {
  const msg = async (p: Promise<unknown>) => (await t.throwsAsync(p))!.message;
  // two labels
  const two = path.join(work, 'two-labels');
  fs.cpSync(rmDir, two, { recursive: true });
  const cfg = JSON.parse(fs.readFileSync(path.join(rmDir, 'config.json'), 'utf8'));
  fs.writeFileSync(path.join(two, 'config.json'), JSON.stringify({ ...cfg, id2label: { 0: 'bad', 1: 'good' }, label2id: { bad: 0, good: 1 } }));
  t.regex(await msg(Model.load(two)), new RegExp(`Expected one label \\(num_labels 1: a scalar reward head; 2 labels given\\) for "id2label" but received .* in ${two}/config.json`));
  const { id2label: _i, label2id: _l, ...noLabels } = cfg;
  fs.writeFileSync(path.join(two, 'config.json'), JSON.stringify({ ...noLabels, num_labels: 3 }));
  t.regex(await msg(Model.load(two)), /Expected num_labels 1 \(a scalar reward head\) for "num_labels" but received 3 in .*two-labels\/config.json/);
  // a …ForSequenceClassification config over a causal checkpoint: no score.weight
  const missing = path.join(work, 'missing-score');
  fs.cpSync(causalDir, missing, { recursive: true });
  const causalCfg = JSON.parse(fs.readFileSync(path.join(causalDir, 'config.json'), 'utf8'));
  fs.writeFileSync(path.join(missing, 'config.json'), JSON.stringify({ ...causalCfg, architectures: ['LlamaForSequenceClassification'], id2label: { 0: 'LABEL_0' } }));
  t.regex(await msg(Model.load(missing)), new RegExp(`checkpoint ${missing} is missing key 'score.weight'`));
  // scoring with a causal LM
  const sc = runCli(['score', '--model', causalDir, '--data', data]);
  t.is(sc.code, 1);
  t.regex(sc.stderr, /causal\/config.json: not a reward model \(architectures \["LlamaForCausalLM"\]/);
  // a bad record names file and line
  const bad = path.join(work, 'bad.jsonl');
  fs.writeFileSync(bad, JSON.stringify({ prompt: 'p', chosen: 'a', rejected: 'b' }) + '\n' + JSON.stringify({ prompt: 'p', chosen: 7, rejected: 'b' }) + '\n');
  const sb = runCli(['score', '--model', rmDir, '--data', bad]);
  t.is(sb.code, 1);
  t.regex(sb.stderr, /bad.jsonl:2: Expected a non-empty string for chosen but received 7/);
  t.is(await msg(Model.load(rmDir, { head: 'lm' as never })), `Expected one of 'score' for head but received "lm"`);
  // options
  const base = { policy: rmDir, data, outputDir: path.join(work, 'bad') };
  t.is(await msg(RewardTrainer.create({ ...base, centerRewardsCoefficient: -1 })), 'Expected a finite number >= 0 for centerRewardsCoefficient but received -1');
  t.regex(await msg(RewardTrainer.create({ ...base, beta: 0.1 } as never)), /^Option 'beta' is not used by RewardTrainer/);
  t.regex(await msg(RewardTrainer.create({ ...base, reference: causalDir } as never)), /^Option 'reference' is not used by RewardTrainer/);
  t.like(rewardOptions({ ...base, centerRewardsCoefficient: 0.01, margin: -0.5 }), { referenceFree: true, reward: { centerRewardsCoefficient: 0.01, margin: -0.5 } });
  t.like(rewardOptions(base), { reward: { centerRewardsCoefficient: 0, margin: 0 } });
  t.is(await msg(RewardTrainer.create({ ...base, margin: Infinity })), 'Expected a finite number for margin but received Infinity');
  const cli = runCli(['reward', '--policy', rmDir, '--data', data, '--output', path.join(work, 'bad-cli'), '--center-rewards-coefficient', '-2', '--no-progress']);
  t.is(cli.code, 1);
  t.regex(cli.stderr, /Expected a finite number >= 0 for centerRewardsCoefficient but received -2/);
  // a DPO run on a reward model is refused by the native trainer
  const dpo = runCli(['train', '--policy', rmDir, '--data', data, '--output', path.join(work, 'dpo-on-rm'), '--reference-free', '--max-steps', '1', '--no-progress', '--no-report']);
  t.is(dpo.code, 1);
  t.regex(dpo.stderr, /train it with RewardTrainer/);
});
