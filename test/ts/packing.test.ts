// Padding-free packing through the public API: a short DPO run with paddingFree equals the same run without it
// (metrics per step and final weights), the reference forward with packing equals the padded one, the CLI flag,
// and option validation.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Model } from '../../lib/model';
import { Tokenizer } from '../../lib/tokenizer';
import { precomputeReference } from '../../lib/trainer/precompute';
import { preferenceExamples } from '../../lib/trainer/data_source';
import { RefLogpCache, referenceIdentity, sequenceKey } from '../../lib/ref_cache';
import { DPOTrainerOptions } from '../../lib/trainer/options';
import { compareWeights, latest, makeModelDir, pairRecords, readWeights, runCli, tmpDir, writeJsonl , trainToEnd } from './helpers/fixtures';

const work = tmpDir('packing');
let policyDir = '';
let refDir = '';
let data = '';

test.before(async () => {
  policyDir = await makeModelDir(path.join(work, 'policy'), 11);
  refDir = await makeModelDir(path.join(work, 'ref'), 12);
  data = writeJsonl(path.join(work, 'pairs.jsonl'), pairRecords(16, 7));
});

function train(opts: Partial<DPOTrainerOptions> & { outputDir: string }) {
  return trainToEnd({ policy: policyDir, reference: refDir, data, beta: 0.1, loggingSteps: 1, saveSteps: 0, ...opts } as DPOTrainerOptions);
}

test.serial('a DPO run with paddingFree gives the metrics and weights of the padded run', async (t) => {
  // SGD: an update linear in the gradient, so float32 rounding differences between the two forwards stay at that
  // level (AdamW divides by sqrt(v) and amplifies them where a gradient is near zero).
  const common = { optimizer: 'sgd' as const, learningRate: 0.5, maxSteps: 4, perDeviceTrainBatchSize: 4, seed: 5, lossType: ['sigmoid', 'sft'] as DPOTrainerOptions['lossType'], lossWeights: [1, 0.3] };
  const padded = await train({ ...common, outputDir: path.join(work, 'padded') });
  const packed = await train({ ...common, paddingFree: true, outputDir: path.join(work, 'packed') });
  t.is(packed.metrics.length, 4);
  t.is(padded.metrics.length, 4);
  for (let i = 0; i < 4; i++) {
    for (const [k, v] of Object.entries(padded.metrics[i])) {
      if (k === 'tokens_per_second') continue;  // timing
      const w = packed.metrics[i][k];
      t.true(Math.abs(w - v) <= 1e-5 * Math.max(1, Math.abs(v)), `step ${i + 1} ${k}: packed ${w} vs padded ${v}`);
    }
  }
  const moved = compareWeights(padded.weights, readWeights(policyDir));
  const diff = compareWeights(packed.weights, padded.weights);
  t.log(`weights moved by ${moved.maxRel.toExponential(2)} (rel); packed vs padded differ by ${diff.maxRel.toExponential(2)}`);
  t.true(moved.maxRel > 1e-3, 'the run must change the weights');
  t.true(diff.maxRel < 1e-5, `max relative weight difference ${diff.maxRel}`);
});

test.serial('the native reference forward packs on request and gives the padded log-probs', async (t) => {
  await using m = await Model.load(refDir);
  // Four right-padded rows of lengths 7, 2, 4, 3 (T = 7): they pack into three rows of 7 (7 | 4 + 3 | 2).
  const lens = [7, 2, 4, 3];
  const T = 7;
  const ids = new Int32Array(lens.length * T);
  const mask = new Int32Array(lens.length * T);
  const labels = new Int32Array(lens.length * T).fill(-100);
  lens.forEach((n, r) => {
    for (let i = 0; i < n; i++) {
      ids[r * T + i] = 5 + ((r * 13 + i * 7) % 40);  // vocab 50
      mask[r * T + i] = 1;
    }
    for (let i = 0; i + 1 < n; i++) labels[r * T + i] = ids[r * T + i + 1];
  });
  const a = await m.native.sequenceLogps(ids, mask, labels, lens.length, T, 1024);
  const b = await m.native.sequenceLogps(ids, mask, labels, lens.length, T, 1024, true);
  t.deepEqual(Array.from(b.counts), [6, 1, 3, 2]);
  for (let r = 0; r < lens.length; r++) {
    t.true(Math.abs(b.logps[r] - a.logps[r]) <= 1e-4 * Math.max(1, Math.abs(a.logps[r])), `row ${r}: ${b.logps[r]} vs ${a.logps[r]}`);
    t.true(a.logps[r] < 0);
  }
  // A pad that carries a label is refused in packed mode (a pad has no packed hidden state).
  const bad = labels.slice();
  bad[1 * T + 5] = 9;
  await t.throwsAsync(m.native.sequenceLogps(ids, mask, bad, lens.length, T, 1024, true), { message: /pads must be labelled -100/ });
});

test.serial('train --padding-free runs from the CLI; a non-boolean paddingFree is refused', async (t) => {
  const out = path.join(work, 'cli');
  const r = runCli(['train', '--policy', policyDir, '--reference', refDir, '--data', data, '--output', out, '--max-steps', '1', '--batch-size', '2', '--padding-free', '--no-progress', '--no-report']);
  t.is(r.code, 0, r.stderr);
  t.true(fs.existsSync(path.join(latest(out), 'model.safetensors')));
  await t.throwsAsync(train({ paddingFree: 'yes' as unknown as boolean, outputDir: path.join(work, 'bad') }), { message: /Expected a boolean for paddingFree but received/ });
});

test.serial('precompute with paddingFree stores the log-probs of the padded forward', async (t) => {
  // long and one-word completions mixed, so that short rows share a packed row
  const mixed = writeJsonl(path.join(work, 'mixed.jsonl'), pairRecords(16, 9).map((p, i) => (i % 2 === 0 ? { ...p, chosen: 'great', rejected: 'bad' } : p)));
  const padded = path.join(work, 'cache-padded'), packed = path.join(work, 'cache-packed');
  await precomputeReference({ reference: refDir, data: mixed, cache: padded, batchSize: 8 });
  const r = await precomputeReference({ reference: refDir, data: mixed, cache: packed, batchSize: 8, paddingFree: true });
  t.is(r.computed + r.cached, 32); // repeated prompt + one-word completions are computed once
  const referenceId = await referenceIdentity(refDir);
  const a = await RefLogpCache.open(padded, { referenceId }), b = await RefLogpCache.open(packed, { referenceId });
  try {
    const tok = await Tokenizer.fromDir(refDir);
    const src = { data: mixed, maxLength: 1024, maxPromptLength: 512, truncationMode: 'keep_end' as const, overlongPolicy: 'truncate' as const, perDeviceTrainBatchSize: 8, shuffle: false, shuffleBufferSize: 1, seed: 0 };
    let n = 0, worst = 0;
    for await (const ex of preferenceExamples(src, tok)) {
      for (const c of [ex.chosen_ids, ex.rejected_ids]) {
        const k = sequenceKey(ex.prompt_ids, c);
        worst = Math.max(worst, Math.abs(a.get(k)!.logp - b.get(k)!.logp));
        t.is(a.get(k)!.count, b.get(k)!.count);
        n++;
      }
    }
    t.is(n, 32);
    t.log(`32 sequences, max |padded − packed| log-prob ${worst.toExponential(2)}`);
    t.true(worst < 1e-4, `max difference ${worst}`);
  } finally {
    await a.close();
    await b.close();
  }
});
