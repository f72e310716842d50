// KTOTrainer: one SGD step against an independent float64 autograd gradient (test/reference/kto_grad.py, KL estimate
// included), a short run that lowers the loss, paired data split into both kinds, the reference cache standing in
// for the reference model, and clear errors for bad options.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { DPOTrainer } from '../../lib/trainer/dpo_trainer';
import { KTOTrainer, ktoOptions } from '../../lib/trainer/kto_trainer';
import { countUnpairedExamples } from '../../lib/trainer/kto_data';
import { havePythonTorch, latest, makeModelDir, pairRecords, PYTHON, ROOT, runCli, tmpDir, writeJsonl } from './helpers/fixtures';

const work = tmpDir('kto');
let policyDir = '';
let refDir = '';
let unpaired = '';
let paired = '';

test.before(async () => {
  policyDir = await makeModelDir(path.join(work, 'policy'), 3);
  refDir = await makeModelDir(path.join(work, 'reference'), 4);
  const pairs = pairRecords(6, 21);
  // unpaired: alternately the chosen (desirable) and the rejected (undesirable) completion of each pair
  unpaired = writeJsonl(path.join(work, 'unpaired.jsonl'), pairs.map((p, i) => (i % 2 === 0 ? { prompt: p.prompt, completion: p.chosen, label: true } : { prompt: p.prompt, completion: p.rejected, label: false })));
  paired = writeJsonl(path.join(work, 'pairs.jsonl'), pairRecords(3, 5));
});

const evals: Record<string, number>[] = [];
async function run(trainer: DPOTrainer) {
  const metrics: Record<string, number>[] = [];
  try {
    for await (const m of trainer.train()) ('eval_loss' in m ? evals : metrics).push(m);
  } finally {
    await trainer[Symbol.asyncDispose]();
  }
  return metrics;
}

for (const v of [
  { name: 'β 0.1, equal weights', cli: ['--beta', '0.1'], py: ['--beta', '0.1'] },
  { name: 'β 0.5, w_d 1.5, w_u 0.75', cli: ['--beta', '0.5', '--desirable-weight', '1.5', '--undesirable-weight', '0.75'], py: ['--beta', '0.5', '--desirable-weight', '1.5', '--undesirable-weight', '0.75'] },
]) {
  test.serial(`torch-dpo kto --optimizer sgd --learning-rate 1, one step, reproduces a float64 autograd gradient (${v.name})`, (t) => {
    if (!havePythonTorch(t)) return t.pass();
    const out = path.join(work, `sgd-${v.name.replace(/\W+/g, '_')}`);
    // tokenize once, so that torch-dpo and the float64 reference read the very same token ids
    const tok = runCli(['tokenize', '--model', policyDir, '--data', unpaired]);
    t.is(tok.code, 0, tok.stderr);
    const tokFile = path.join(work, 'unpaired.tok.jsonl');
    fs.writeFileSync(tokFile, tok.stdout);
    const r = runCli(['kto', ...v.cli, '--policy', policyDir, '--reference', refDir, '--data', tokFile, '--optimizer', 'sgd', '--learning-rate', '1.0', '--batch-size', '6',
      '--max-steps', '1', '--no-shuffle', '--max-grad-norm', '0', '--logging-steps', '1', '--output', out, '--no-progress', '--no-report']);
    t.is(r.code, 0, r.stderr);
    const py = spawnSync(PYTHON, [path.join(ROOT, 'test/reference/kto_grad.py'), '--policy', policyDir, '--reference', refDir, '--examples', tokFile, '--after', latest(out), ...v.py], { encoding: 'utf8' });
    t.is(py.status, 0, py.stderr);
    const [klLine, resLine] = py.stdout.trim().split('\n');
    const { kl } = JSON.parse(klLine);
    const res = JSON.parse(resLine);
    const logged = JSON.parse(fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n')[0]);
    t.log(`float64 loss ${res.loss}, torch-dpo ${logged.loss}; z0 ${kl} vs ${logged.kl}; gradient rel. error ${res.rel_err.toExponential(2)} (worst ${res.worst} ${res.max_tensor_rel_err.toExponential(2)}), |g| ${res.grad_norm.toFixed(4)}`);
    t.true(res.grad_norm > 1e-3, 'the gradient must not be trivial');
    t.true(res.rel_err < 1e-4, `relative gradient error ${res.rel_err}`);
    t.true(Math.abs(logged.loss - res.loss) <= 1e-5 * Math.max(1, Math.abs(res.loss)), `loss ${logged.loss} vs ${res.loss}`);
    t.true(Math.abs(logged.kl - kl) <= 1e-4 * Math.max(1, Math.abs(kl)), `kl ${logged.kl} vs ${kl}`);
    t.true(kl > 0, 'the KL estimate must be active (> 0) for this check to cover it');
    t.is(logged['count/chosen'], 3);
    t.is(logged['count/rejected'], 3);
  });
}

test.serial('KTOTrainer: a short AdamW run lowers the loss and separates the rewards', async (t) => {
  const out = path.join(work, 'adamw');
  evals.length = 0;
  const m = await run(await KTOTrainer.create({ policy: policyDir, reference: refDir, data: unpaired, evalData: paired, outputDir: out, perDeviceTrainBatchSize: 6, maxSteps: 8, shuffle: false, loggingSteps: 1, saveSteps: 0, learningRate: 3e-3, lrSchedulerType: 'constant', beta: 0.5 }));
  t.is(evals.length, 1);
  t.is(evals[0]['eval_count/chosen'], 3); // the 3 eval pairs, split
  t.true(Number.isFinite(evals[0].eval_loss) && evals[0].eval_kl >= 0 && Number.isFinite(evals[0]['eval_rewards/margins']), JSON.stringify(evals[0]));
  t.is(m.length, 8);
  t.log(`loss ${m.map((x) => x.loss.toFixed(4)).join(' -> ')}; kl ${m.map((x) => x.kl.toFixed(3)).join(' ')}`);
  t.true(m.every((x) => Number.isFinite(x.loss) && x.kl >= 0));
  t.true(m[7].loss < 0.9 * m[0].loss, `loss ${m[0].loss} -> ${m[7].loss}`);
  t.true(m[7]['rewards/margins'] > m[0]['rewards/margins'] + 0.1, `margins ${m[0]['rewards/margins']} -> ${m[7]['rewards/margins']}`);
  t.true(fs.existsSync(path.join(latest(out), 'model.safetensors')));
});

test.serial('KTOTrainer on paired data: each pair gives a desirable and an undesirable example; the reference cache replaces the model', async (t) => {
  t.is(await countUnpairedExamples(paired), 6);
  const cache = path.join(work, 'cache');
  const base = { policy: policyDir, data: paired, perDeviceTrainBatchSize: 2, numTrainEpochs: 1, shuffle: false, loggingSteps: 1, saveSteps: 0, learningRate: 1e-3 };
  const first = await run(await KTOTrainer.create({ ...base, reference: refDir, refCache: cache, outputDir: path.join(work, 'paired-1') }));
  t.is(first.length, 3); // 6 examples / batch 2
  t.is(first.reduce((s, x) => s + x['count/chosen'], 0), 3);
  t.is(first.reduce((s, x) => s + x['count/rejected'], 0), 3);
  // the second run has no reference model: every example and every mismatched pair must come from the cache
  const second = await run(await KTOTrainer.create({ ...base, refCache: cache, outputDir: path.join(work, 'paired-2') }));
  t.is(second.length, 3);
  for (let i = 0; i < 3; i++) {
    t.true(Math.abs(second[i].loss - first[i].loss) < 1e-6, `step ${i}: ${second[i].loss} vs ${first[i].loss}`);
    t.true(Math.abs(second[i].kl - first[i].kl) < 1e-5, `step ${i}: kl ${second[i].kl} vs ${first[i].kl}`);
  }
});

test('KTOTrainer options: own loss settings, clear errors', async (t) => {
  const base = { policy: 'p', data: 'd', outputDir: 'o', reference: 'r' };
  t.deepEqual(ktoOptions({ ...base, beta: 0.3 }).kto, { desirableWeight: 1, undesirableWeight: 1 });
  t.is(ktoOptions({ ...base, beta: 0.3, desirableWeight: 2 }).beta, 0.3);
  const msg = (f: () => unknown) => {
    try {
      f();
      return 'no error';
    } catch (e) {
      return (e as Error).message;
    }
  };
  t.is(msg(() => ktoOptions({ ...base, desirableWeight: 0 })), 'Expected a finite number > 0 for desirableWeight but received 0');
  t.regex(msg(() => ktoOptions({ ...base, lossType: 'sigmoid' } as never)), /Option 'lossType' is not used by KTOTrainer/);
  t.regex(msg(() => ktoOptions({ ...base, bogus: 1 } as never)), /bogus/);
  const r = runCli(['kto', '--policy', policyDir, '--data', unpaired, '--output', path.join(work, 'noref'), '--no-progress', '--no-report']);
  t.not(r.code, 0);
  t.regex(r.stderr, /reference/);
});

test.serial('precompute --kto replays a shuffled 2-epoch run: training from the cache alone equals training with the reference model', async (t) => {
  const cache = path.join(work, 'kto-cache');
  const pre = runCli(['precompute', '--kto', '--reference', refDir, '--data', unpaired, '--cache', cache, '--batch-size', '4', '--seed', '7', '--epochs', '2']);
  t.is(pre.code, 0, pre.stderr);
  t.log(pre.stdout.trim());
  const base = { policy: policyDir, data: unpaired, perDeviceTrainBatchSize: 4, numTrainEpochs: 2, seed: 7, loggingSteps: 1, saveSteps: 0, learningRate: 1e-3 };
  const withModel = await run(await KTOTrainer.create({ ...base, reference: refDir, outputDir: path.join(work, 'pre-model') }));
  const fromCache = await run(await KTOTrainer.create({ ...base, refCache: cache, outputDir: path.join(work, 'pre-cache') }));
  t.is(withModel.length, 4); // 6 examples a epoch, batches of 4 and 2
  t.is(fromCache.length, withModel.length);
  for (let i = 0; i < withModel.length; i++) {
    t.true(Math.abs(fromCache[i].loss - withModel[i].loss) < 1e-6, `step ${i}: ${fromCache[i].loss} vs ${withModel[i].loss}`);
    t.true(Math.abs(fromCache[i].kl - withModel[i].kl) < 1e-5, `step ${i}: kl ${fromCache[i].kl} vs ${withModel[i].kl}`);
  }
  // another seed forms other batches: their mismatched pairs are not in the cache, and the error names the example
  const other = await KTOTrainer.create({ ...base, seed: 8, refCache: cache, outputDir: path.join(work, 'pre-other') });
  const err = await t.throwsAsync(run(other));
  t.regex(err!.message, /missing from the reference cache/);
});

test.serial('KTOTrainer with LoRA and no reference model: the adapters-off policy is the reference', async (t) => {
  const m = await run(await KTOTrainer.create({ policy: policyDir, data: unpaired, outputDir: path.join(work, 'lora'), lora: { r: 4, alpha: 8 }, perDeviceTrainBatchSize: 6, maxSteps: 4, shuffle: false, loggingSteps: 1, saveSteps: 0, learningRate: 1e-2, lrSchedulerType: 'constant' }));
  t.is(m.length, 4);
  // B = 0 at the start: policy = reference, so Δ = 0, z0 = 0 and every loss term is w·(1 − σ(0)) = 0.5
  t.is(m[0].kl, 0);
  t.true(Math.abs(m[0]['rewards/chosen']) < 1e-6 && Math.abs(m[0]['rewards/rejected']) < 1e-6, JSON.stringify(m[0]));
  t.true(Math.abs(m[0].loss - 0.5) < 1e-6, `loss ${m[0].loss}`);
  t.true(m[3].loss < m[0].loss, `loss ${m.map((x) => x.loss).join(' -> ')}`);
  t.true(fs.existsSync(path.join(latest(path.join(work, 'lora')), 'adapter_model.safetensors')));
});
