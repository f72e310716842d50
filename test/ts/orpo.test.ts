// The reference-free trainers (ORPO, CPO / SimPO, SFT): one SGD step against an independent float64 autograd
// gradient (test/reference/dpo_grad.py), short runs that lower the loss, and clear errors for bad options.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DPOTrainer } from '../../lib/trainer/dpo_trainer';
import { cpoOptions, CPOTrainer, orpoOptions, ORPOTrainer, SFTTrainer } from '../../lib/trainer/preference_trainers';
import { checkSgdStepAgainstFloat64, havePythonTorch, latest, makeModelDir, pairRecords, runCli, tmpDir, writeJsonl } from './helpers/fixtures';

const work = tmpDir('orpo');
let policyDir = '';
let data = '';

test.before(async () => {
  policyDir = await makeModelDir(path.join(work, 'policy'), 3);
  data = writeJsonl(path.join(work, 'pairs.jsonl'), pairRecords(4, 7));
});

for (const variant of [
  { name: 'orpo', cli: ['orpo', '--orpo-alpha', '0.3'], py: ['--loss', 'orpo', '--lambda', '0.3', '--alpha', '1'] },
  // chunks of at most 8 token rows: the fused lm-head path evaluates the pair losses one chunk of pairs at a time
  { name: 'orpo, small lm-head chunks', cli: ['orpo', '--orpo-alpha', '0.3', '--chunk-rows', '8'], py: ['--loss', 'orpo', '--lambda', '0.3', '--alpha', '1'] },
  {
    name: 'simpo',
    cli: ['cpo', '--loss', 'simpo', '--beta', '2', '--simpo-gamma', '0.7', '--cpo-alpha', '0.5', '--label-smoothing', '0.1'],
    py: ['--loss', 'simpo', '--beta', '2', '--gamma', '0.7', '--alpha', '0.5', '--label-smoothing', '0.1'],
  },
  { name: 'cpo', cli: ['cpo', '--beta', '0.2'], py: ['--loss', 'cpo', '--beta', '0.2', '--alpha', '1'] },
  { name: 'cpo without NLL', cli: ['cpo', '--beta', '0.2', '--cpo-alpha', '0'], py: ['--loss', 'cpo', '--beta', '0.2', '--alpha', '0'] },
  { name: 'sft', cli: ['sft'], py: ['--loss', 'sft'] },
]) {
  test.serial(`torch-dpo ${variant.cli[0]} --optimizer sgd --learning-rate 1, one step, reproduces a float64 autograd gradient (${variant.name})`, (t) => {
    if (!havePythonTorch(t)) return t.pass();
    checkSgdStepAgainstFloat64(t, { name: variant.name, work, policyDir, cliArgs: variant.cli, pyArgs: ['--beta', '0.1', ...variant.py] });
  });
}

async function run(create: () => Promise<DPOTrainer>) {
  const trainer = await create();
  const losses: number[] = [];
  const metrics: Record<string, number>[] = [];
  try {
    for await (const m of trainer.train()) {
      if ('eval_loss' in m) continue;
      losses.push(m.loss);
      metrics.push(m);
    }
  } finally {
    await trainer[Symbol.asyncDispose]();
  }
  return { losses, metrics };
}

// The same 4 pairs every step (batch 4, no shuffle): the loss of that batch must fall.
const common = { data: '', perDeviceTrainBatchSize: 4, maxSteps: 8, shuffle: false, loggingSteps: 1, saveSteps: 0, learningRate: 3e-3, lrSchedulerType: 'constant' as const };
for (const [name, create] of [
  ['ORPOTrainer', (out: string) => ORPOTrainer.create({ ...common, data, policy: policyDir, outputDir: out, orpoAlpha: 0.5 })],
  ['CPOTrainer (sigmoid)', (out: string) => CPOTrainer.create({ ...common, data, policy: policyDir, outputDir: out, beta: 0.5 })],
  ['CPOTrainer (simpo, no NLL)', (out: string) => CPOTrainer.create({ ...common, data, policy: policyDir, outputDir: out, lossType: 'simpo', beta: 2, simpoGamma: 0.5, cpoAlpha: 0 })],
  ['SFTTrainer', (out: string) => SFTTrainer.create({ ...common, data, policy: policyDir, outputDir: out })],
] as const) {
  test.serial(`${name}: a short AdamW run lowers the loss`, async (t) => {
    const out = path.join(work, `run-${name.replace(/\W+/g, '_')}`);
    const { losses, metrics } = await run(() => create(out));
    t.is(losses.length, 8);
    t.log(`${name}: loss ${losses.map((l) => l.toFixed(4)).join(' -> ')}`);
    t.true(losses.every(Number.isFinite));
    t.true(losses[7] < 0.9 * losses[0], `loss ${losses[0]} -> ${losses[7]}`);
    t.true(fs.existsSync(path.join(latest(out), 'model.safetensors')));
    // TRL's rewards: β·(average log-prob) for ORPO / SimPO (completions have several tokens, so well under
    // β·|summed log-prob|), β·(summed log-prob) for CPO.
    const beta = name.startsWith('ORPO') || name.startsWith('CPOTrainer (sigmoid') ? 0.5 : name.includes('simpo') ? 2 : 0.1;
    const r = metrics[0]['rewards/chosen'], lp = metrics[0]['logps/chosen'];
    if (name.startsWith('ORPO') || name.includes('simpo')) t.true(r < 0 && Math.abs(r) < 0.5 * beta * Math.abs(lp), `reward ${r}, logps ${lp}`);
    if (name.includes('sigmoid')) t.true(Math.abs(r - beta * lp) <= 1e-5 * Math.abs(r), `reward ${r}, logps ${lp}`);
    if (name.startsWith('ORPO')) {
      // TRL's ORPO metrics, computed in TS from the per-pair log-probs, must add up to the native loss:
      // loss = nll_loss − λ·log_odds_ratio for one micro-batch per logged step (λ = 0.5 here).
      for (const m of metrics) {
        t.true(m.log_odds_ratio < 0 && Number.isFinite(m.log_odds_chosen) && m.nll_loss > 0, JSON.stringify(m));
        t.true(Math.abs(m.loss - (m.nll_loss - 0.5 * m.log_odds_ratio)) < 1e-4 * m.loss, `loss ${m.loss} vs nll ${m.nll_loss} − 0.5·${m.log_odds_ratio}`);
      }
      t.true(metrics[7].log_odds_chosen > metrics[0].log_odds_chosen, 'training raises the log odds of the chosen completions');
    } else {
      t.false('log_odds_ratio' in metrics[0]);
    }
  });
}

test('options map onto DPOTrainer options', (t) => {
  const base = { policy: 'p', data: 'd', outputDir: 'o' };
  t.like(orpoOptions({ ...base, orpoAlpha: 0.25 }), { lossType: ['orpo', 'sft'], lossWeights: [1, 1], beta: 0.25, referenceFree: true });
  t.like(orpoOptions(base), { beta: 0.1 });
  t.like(cpoOptions(base), { lossType: ['cpo', 'sft'], lossWeights: [1, 1], beta: 0.1, simpoGamma: 0.5, referenceFree: true });
  t.like(cpoOptions({ ...base, lossType: 'simpo', cpoAlpha: 0, simpoGamma: 1.5 }), { lossType: ['simpo'], lossWeights: [1], simpoGamma: 1.5 });
  t.like(cpoOptions({ ...base, lossType: 'hinge', cpoAlpha: 2 }), { lossType: ['hinge', 'sft'], lossWeights: [1, 2] });
  t.like(cpoOptions({ ...base, lossType: 'ipo' }), { lossType: ['ipo', 'sft'] });
});

test('bad options give clear errors', async (t) => {
  const base = { policy: policyDir, data, outputDir: path.join(work, 'bad') };
  const msg = async (p: Promise<unknown>) => (await t.throwsAsync(p))!.message;
  t.is(await msg(ORPOTrainer.create({ ...base, orpoAlpha: 0 })), 'Expected a finite number > 0 for orpoAlpha but received 0');
  t.is(await msg(ORPOTrainer.create({ ...base, orpoAlpha: -1 })), 'Expected a finite number > 0 for orpoAlpha but received -1');
  t.is(await msg(ORPOTrainer.create({ ...base, orpoAlpha: NaN })), 'Expected a finite number > 0 for orpoAlpha but received NaN');
  t.is(await msg(CPOTrainer.create({ ...base, cpoAlpha: -0.5 })), 'Expected a finite number >= 0 for cpoAlpha but received -0.5');
  t.is(await msg(CPOTrainer.create({ ...base, simpoGamma: -0.1 })), 'Expected a finite number >= 0 for simpoGamma but received -0.1');
  t.is(await msg(CPOTrainer.create({ ...base, beta: 0 })), 'Expected a finite number > 0 for beta but received 0');
  t.is(await msg(CPOTrainer.create({ ...base, lossType: 'kto' as never })), `Expected one of 'sigmoid', 'hinge', 'ipo', 'simpo' for lossType but received "kto"`);
  t.regex(await msg(ORPOTrainer.create({ ...base, beta: 0.1 } as never)), /^Option 'beta' is not used by ORPOTrainer \(it is reference-free/);
  t.regex(await msg(CPOTrainer.create({ ...base, reference: policyDir } as never)), /^Option 'reference' is not used by CPOTrainer/);
  t.regex(await msg(SFTTrainer.create({ ...base, lossType: 'sigmoid' } as never)), /^Option 'lossType' is not used by SFTTrainer/);
  t.regex(await msg(SFTTrainer.create({ ...base, bogus: 1 } as never)), /^Unknown option 'bogus' for SFTTrainer/);
  t.is(await msg(DPOTrainer.create({ ...base, lossType: 'simpo', referenceFree: true, simpoGamma: -2 })), 'Expected a finite number >= 0 for simpoGamma but received -2');
  const r = runCli(['orpo', '--policy', policyDir, '--data', data, '--output', path.join(work, 'bad-cli'), '--orpo-alpha', '0', '--no-progress']);
  t.is(r.code, 1);
  t.regex(r.stderr, /Expected a finite number > 0 for orpoAlpha but received 0/);
  const c = runCli(['cpo', '--policy', policyDir, '--data', data, '--output', path.join(work, 'bad-cli'), '--loss', 'dpo', '--no-progress']);
  t.is(c.code, 1);
  t.regex(c.stderr, /Expected one of 'sigmoid', 'hinge', 'ipo', 'simpo' for lossType but received "dpo"/);
});
