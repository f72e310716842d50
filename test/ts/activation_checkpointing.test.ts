// Activation checkpointing through the public API: a DPO run that recomputes each block in the backward ends with the
// metrics and weights of the plain run (alone and with padding-free packing), the CLI flag, and option validation.
import test from 'ava';
import * as path from 'node:path';
import { DPOTrainerOptions } from '../../lib/trainer/options';
import { compareWeights, latest, makeModelDir, pairRecords, readWeights, runCli, tmpDir, trainToEnd, writeJsonl } from './helpers/fixtures';

const work = tmpDir('activation-checkpointing');
let policyDir = '';
let refDir = '';
let data = '';

test.before(async () => {
  policyDir = await makeModelDir(path.join(work, 'policy'), 21);
  refDir = await makeModelDir(path.join(work, 'ref'), 22);
  data = writeJsonl(path.join(work, 'pairs.jsonl'), pairRecords(12, 3));
});

function train(opts: Partial<DPOTrainerOptions> & { outputDir: string }) {
  return trainToEnd({ policy: policyDir, reference: refDir, data, beta: 0.1, learningRate: 1e-3, loggingSteps: 1, saveSteps: 0, maxSteps: 3, perDeviceTrainBatchSize: 4, seed: 2, ...opts } as DPOTrainerOptions);
}

test.serial('recomputing the blocks in the backward gives the plain run (AdamW), padded and padding-free', async (t) => {
  for (const paddingFree of [false, true]) {
    const plain = await train({ paddingFree, outputDir: path.join(work, `plain-${paddingFree}`) });
    const ck = await train({ activationCheckpointing: true, paddingFree, outputDir: path.join(work, `ckpt-${paddingFree}`) });
    t.is(ck.metrics.length, 3);
    for (let i = 0; i < 3; i++) {
      for (const [k, v] of Object.entries(plain.metrics[i])) {
        if (k === 'tokens_per_second') continue;
        const w = ck.metrics[i][k];
        t.true(Math.abs(w - v) <= 1e-5 * Math.max(1, Math.abs(v)), `step ${i + 1} ${k}: checkpointed ${w} vs plain ${v} (paddingFree ${paddingFree})`);
      }
    }
    const moved = compareWeights(plain.weights, readWeights(policyDir));
    const diff = compareWeights(ck.weights, plain.weights);
    t.log(`paddingFree ${paddingFree}: weights moved by ${moved.maxRel.toExponential(2)}; checkpointed vs plain differ by ${diff.maxRel.toExponential(2)}`);
    t.true(moved.maxRel > 1e-4, 'the run must change the weights');
    t.true(diff.maxRel <= 1e-6, `max relative weight difference ${diff.maxRel}`);
  }
});

test.serial('train --activation-checkpointing runs from the CLI; a non-boolean option is refused', async (t) => {
  const out = path.join(work, 'cli');
  const r = runCli(['train', '--policy', policyDir, '--reference', refDir, '--data', data, '--output', out, '--max-steps', '1', '--batch-size', '2',
    '--activation-checkpointing', '--no-progress', '--no-report']);
  t.is(r.code, 0, r.stderr);
  t.truthy(latest(out));
  await t.throwsAsync(train({ activationCheckpointing: 'yes' as unknown as boolean, outputDir: path.join(work, 'bad') }), { message: /Expected a boolean for activationCheckpointing but received "yes"/ });
});
