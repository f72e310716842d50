// DPO training end to end on a tiny Llama: the gradient against an independent float64 implementation, gradient
// accumulation, the reference cache, resume after SIGKILL, the event loop, and bad input.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { DPOTrainer } from '../../lib/trainer/dpo_trainer';
import { DPOTrainerOptions } from '../../lib/trainer/options';
import { runtimeInfo } from '../../lib/runtime';
import { checkSgdStepAgainstFloat64, compareWeights, CLI, havePythonTorch, latest, makeModelDir, pairRecords, readWeights, runCli, tmpDir, writeJsonl , trainToEnd } from './helpers/fixtures';

const work = tmpDir('train');
let policyDir = '';
let refDir = '';
let data = '';

test.before(async () => {
  policyDir = await makeModelDir(path.join(work, 'policy'), 1);
  refDir = await makeModelDir(path.join(work, 'ref'), 2);
  data = writeJsonl(path.join(work, 'pairs.jsonl'), pairRecords(24, 5));
});

function train(opts: Partial<DPOTrainerOptions> & { outputDir: string }) {
  return trainToEnd({ policy: policyDir, data, beta: 0.1, loggingSteps: 1, saveSteps: 0, ...opts } as DPOTrainerOptions);
}

for (const variant of [
  { name: 'sigmoid', args: ['--loss', 'sigmoid'], py: ['--loss', 'sigmoid'] },
  { name: 'cDPO (label smoothing 0.2)', args: ['--loss', 'sigmoid', '--label-smoothing', '0.2'], py: ['--loss', 'sigmoid', '--label-smoothing', '0.2'] },
  { name: 'ipo', args: ['--loss', 'ipo'], py: ['--loss', 'ipo'] },
]) {
  test.serial(`train --optimizer sgd --learning-rate 1, one step, reproduces a float64 autograd gradient (${variant.name})`, (t) => {
    if (!havePythonTorch(t)) return t.pass();
    checkSgdStepAgainstFloat64(t, {
      name: variant.name, work, policyDir,
      cliArgs: ['train', '--reference', refDir, ...variant.args, '--beta', '0.1'],
      pyArgs: ['--reference', refDir, '--beta', '0.1', ...variant.py],
    });
  });
}

test.serial('fusedAdamw: the fused AdamW kernel (libtorch >= 2.4) and the per-tensor update train to the same weights', async (t) => {
  const common = { reference: refDir, learningRate: 1e-2, weightDecay: 0.1, maxSteps: 4, shuffle: false, perDeviceTrainBatchSize: 4 };
  const a = await train({ ...common, fusedAdamw: true, outputDir: path.join(work, 'fused-a') });
  const b = await train({ ...common, fusedAdamw: false, outputDir: path.join(work, 'fused-b') });
  const moved = compareWeights(a.weights, readWeights(policyDir));
  const c = compareWeights(a.weights, b.weights);
  t.log(`${runtimeInfo().libtorchVersion}: weights moved by ${moved.maxRel.toExponential(2)} (rel); fused vs per-tensor differ by ${c.maxRel.toExponential(2)}`);
  t.true(moved.maxRel > 1e-3);
  t.true(c.maxRel < 1e-5, `max relative difference ${c.maxRel}`);
  await t.throwsAsync(DPOTrainer.create({ policy: policyDir, reference: refDir, data, outputDir: path.join(work, 'fused-bad'), fusedAdamw: 'yes' as unknown as boolean }), { message: /Expected a boolean for fusedAdamw/ });
});

test.serial('gradient accumulation: batch 1 x accumulate 4 equals batch 4 x 1', async (t) => {
  const common = { reference: refDir, optimizer: 'sgd' as const, learningRate: 0.5, maxSteps: 3, shuffle: false, maxGradNorm: 0, lrSchedulerType: 'constant' as const };
  const a = await train({ ...common, perDeviceTrainBatchSize: 4, gradientAccumulationSteps: 1, outputDir: path.join(work, 'acc-a') });
  const b = await train({ ...common, perDeviceTrainBatchSize: 1, gradientAccumulationSteps: 4, outputDir: path.join(work, 'acc-b') });
  const before = readWeights(policyDir);
  const moved = compareWeights(a.weights, before);
  const c = compareWeights(b.weights, a.weights);
  t.log(`weights moved by ${moved.maxRel.toExponential(2)} (rel); accumulated vs large batch differ by ${c.maxRel.toExponential(2)}`);
  t.true(moved.maxRel > 1e-3);
  t.true(c.maxRel < 1e-5, `max relative difference ${c.maxRel}`);
  for (let i = 0; i < 3; i++) t.true(Math.abs(a.metrics[i].loss - b.metrics[i].loss) < 1e-5, `step ${i + 1} loss ${a.metrics[i].loss} vs ${b.metrics[i].loss}`);
});

test.serial('an epoch whose last micro-batches do not fill an accumulation window ends with a step of its own', async (t) => {
  // 24 pairs, batch 5: micro-batches of 5, 5, 5, 5, 4; accumulating 2: steps after micro-batches 2, 4 and 5
  const r = await train({ reference: refDir, perDeviceTrainBatchSize: 5, gradientAccumulationSteps: 2, numTrainEpochs: 2, shuffle: false, learningRate: 1e-3, outputDir: path.join(work, 'acc-epoch') });
  const steps = r.metrics.filter((m) => !('eval_loss' in m)).map((m) => m.step);
  t.deepEqual(steps, [1, 2, 3, 4, 5, 6]);
  const st = JSON.parse(fs.readFileSync(path.join(latest(path.join(work, 'acc-epoch')), 'trainer_state.json'), 'utf8'));
  t.is(st.totalSteps, 6);
  t.is(st.step, 6);
});

test.serial('training from the reference cache gives exactly the weights of training with the reference model', async (t) => {
  const cache = path.join(work, 'cache');
  const common = { learningRate: 1e-3, maxSteps: 4, perDeviceTrainBatchSize: 4, seed: 3 };
  const a = await train({ ...common, reference: refDir, refCache: cache, outputDir: path.join(work, 'cache-a') });
  const b = await train({ ...common, refCache: cache, outputDir: path.join(work, 'cache-b') });
  const c = await train({ ...common, reference: refDir, outputDir: path.join(work, 'cache-c') });
  t.true(compareWeights(b.weights, a.weights).identical, 'cache-only run must be bit-identical to the run with the reference');
  t.true(compareWeights(c.weights, a.weights).identical, 'a run without any cache must be bit-identical too');
  t.deepEqual(b.metrics.map((m) => m.loss), a.metrics.map((m) => m.loss));
  // An example missing from the cache, with no reference model: a clear error.
  const more = writeJsonl(path.join(work, 'more.jsonl'), pairRecords(8, 99));
  await t.throwsAsync(train({ ...common, data: more, refCache: cache, outputDir: path.join(work, 'cache-d') }), { message: /is missing from the reference cache/ });
  // A cache made with another reference model is refused.
  await t.throwsAsync(train({ ...common, reference: policyDir, refCache: cache, outputDir: path.join(work, 'cache-e') }), { message: /another reference model/ });
});

test.serial('precompute fills the cache once; a second run computes nothing', (t) => {
  const cache = path.join(work, 'pre-cache');
  const r1 = runCli(['precompute', '--reference', refDir, '--data', data, '--cache', cache, '--batch-size', '5']);
  t.is(r1.code, 0, r1.stderr);
  t.regex(r1.stdout, /24 examples, 48 sequences computed, 0 already cached/);
  const r2 = runCli(['precompute', '--reference', refDir, '--data', data, '--cache', cache]);
  t.regex(r2.stdout, /24 examples, 0 sequences computed, 48 already cached/);
  const r3 = runCli(['train', '--policy', policyDir, '--ref-cache', cache, '--data', data, '--max-steps', '2', '--batch-size', '4', '--output', path.join(work, 'pre-train'), '--no-progress', '--no-report']);
  t.is(r3.code, 0, r3.stderr);
});

test.serial('a run killed with SIGKILL and resumed ends with the weights of an uninterrupted run', async (t) => {
  const args = (out: string) => ['train', '--policy', policyDir, '--reference', refDir, '--data', data, '--learning-rate', '1e-3', '--batch-size', '3',
    '--max-steps', '40', '--save-steps', '8', '--logging-steps', '1', '--seed', '9', '--output', out, '--no-progress', '--no-report'];
  const full = path.join(work, 'resume-full');
  t.is(runCli(args(full)).code, 0);
  const killed = path.join(work, 'resume-killed');
  const child = spawn(process.execPath, [CLI, ...args(killed)], { stdio: 'ignore' });
  await new Promise<void>((resolve, reject) => {
    const timer = setInterval(() => {
      if (fs.existsSync(path.join(killed, 'checkpoint-16', 'trainer_state.json'))) {
        clearInterval(timer);
        child.kill('SIGKILL');
        resolve();
      }
    }, 5);
    child.on('exit', () => {
      clearInterval(timer);
      resolve();
    });
    setTimeout(() => reject(new Error('no checkpoint-16 within 120 s')), 120000);
  });
  await new Promise((r) => setTimeout(r, 100));
  t.false(fs.existsSync(path.join(killed, 'checkpoint-40')), 'the run must have been killed before its end');
  const resumed = runCli([...args(killed), '--resume']);
  t.is(resumed.code, 0, resumed.stderr);
  const c = compareWeights(readWeights(latest(killed)), readWeights(latest(full)));
  t.true(c.identical, `resumed weights differ by ${c.maxRel}`);
});

test.serial('the event loop keeps turning while training runs', async (t) => {
  let maxLag = 0;
  let last = Date.now();
  const timer = setInterval(() => {
    const now = Date.now();
    maxLag = Math.max(maxLag, now - last - 10);
    last = now;
  }, 10);
  const t0 = Date.now();
  await train({ reference: refDir, maxSteps: 12, perDeviceTrainBatchSize: 8, outputDir: path.join(work, 'lag') });
  clearInterval(timer);
  t.log(`trained 12 steps in ${Date.now() - t0} ms; worst event-loop lag ${maxLag} ms`);
  t.true(maxLag < 250, `event loop blocked for ${maxLag} ms`);
});

test.serial('abort with an AbortSignal stops after the current step and keeps a checkpoint', async (t) => {
  const out = path.join(work, 'abort');
  const tr = await DPOTrainer.create({ policy: policyDir, reference: refDir, data, outputDir: out, maxSteps: 50, perDeviceTrainBatchSize: 2, loggingSteps: 1, saveSteps: 0 });
  const ac = new AbortController();
  let n = 0;
  for await (const _ of tr.train({ signal: ac.signal })) if (++n === 3) ac.abort();
  await tr[Symbol.asyncDispose]();
  t.true(tr.state.step >= 3 && tr.state.step < 50);
  t.true(fs.existsSync(path.join(latest(out), 'model.safetensors')));
});

test.serial('bad options and inputs give clear errors', async (t) => {
  const base = { policy: policyDir, reference: refDir, data, outputDir: path.join(work, 'bad') };
  await t.throwsAsync(DPOTrainer.create({ ...base, beta: 0 }), { message: 'Expected a finite number > 0 for beta but received 0' });
  await t.throwsAsync(DPOTrainer.create({ ...base, learningRate: -1 }), { message: /for learningRate but received -1/ });
  await t.throwsAsync(DPOTrainer.create({ ...base, perDeviceTrainBatchSize: 0 }), { message: /for perDeviceTrainBatchSize but received 0/ });
  await t.throwsAsync(DPOTrainer.create({ ...base, lossType: 'dpo' as any }), { message: /one of 'sigmoid'.* for lossType\[0\] but received "dpo"/ });
  await t.throwsAsync(DPOTrainer.create({ ...base, bogus: 1 } as any), { message: /Unknown option 'bogus'/ });
  await t.throwsAsync(DPOTrainer.create({ ...base, reference: undefined }), { message: /a reference model, a refCache, or referenceFree/ });
  await t.throwsAsync(DPOTrainer.create({ ...base, outputDir: path.join(data, 'out') }), { message: /directory that can be created for outputDir/ });
  const malformed = path.join(work, 'malformed.jsonl');
  fs.writeFileSync(malformed, '{"prompt": "review of the film :", "chosen": "it was good", "rejected": "it was bad"}\n{"prompt": oops}\n');
  await t.throwsAsync(train({ ...base, data: malformed, outputDir: path.join(work, 'bad2') }), { message: /malformed\.jsonl:2/ });
  const same = writeJsonl(path.join(work, 'same.jsonl'), [{ prompt: 'review of the film :', chosen: 'it was good', rejected: 'it was good' }]);
  await t.throwsAsync(train({ ...base, data: same, outputDir: path.join(work, 'bad3') }), { message: /same\.jsonl:1/ });
  // tokenizer larger than the model's embedding
  const small = await makeModelDir(path.join(work, 'small-vocab'), 3, { vocab_size: 20 });
  await t.throwsAsync(DPOTrainer.create({ ...base, policy: small }), { message: /larger than the model's embedding/ });
  // corrupted checkpoint on resume
  const out = path.join(work, 'corrupt');
  await train({ ...base, maxSteps: 1, outputDir: out });
  fs.writeFileSync(path.join(latest(out), 'trainer_state.json'), '{"step": "x"');
  await t.throwsAsync(DPOTrainer.create({ ...base, outputDir: out, resume: true }), { message: /trainer_state\.json: corrupted checkpoint state/ });
});

test.serial('non-finite training stops with a clear error and writes no non-finite checkpoint', async (t) => {
  const out = path.join(work, 'nan');
  const err = await t.throwsAsync(train({ policy: policyDir, reference: refDir, data, outputDir: out, optimizer: 'sgd', learningRate: 1e38, maxGradNorm: 0, maxSteps: 6, perDeviceTrainBatchSize: 4, maxNonFiniteSteps: 1 }));
  t.regex(err!.message, /non-finite/);
  const ckpts = fs.existsSync(out) ? fs.readdirSync(out).filter((d) => d.startsWith('checkpoint-')) : [];
  for (const c of ckpts) {
    for (const [k, w] of readWeights(path.join(out, c))) t.true(w.every(Number.isFinite), `${c}/${k} has non-finite values`);
  }
});
