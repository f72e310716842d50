// lossBenchmark(): the DPO loss alone, timed off the JS thread; its fused and naive paths agree on the same inputs
// and bad options are refused before reaching native code.
import test from 'ava';
import { lossBenchmark } from '../../lib/loss_benchmark';

const small = { pairs: 2, seq: 16, prompt: 4, hidden: 24, vocab: 80, iters: 3, warmup: 1, chunkRows: 10 } as const;

test('fused and naive losses and gradients agree; FLOP count and timings are reported', async (t) => {
  for (const impl of ['fused', 'naive'] as const) {
    const r = await lossBenchmark({ ...small, impl, compare: true, seed: 3 });
    t.log(`${impl}: ${r.msMedian.toFixed(2)} ms, loss ${r.loss.toFixed(6)}, Δloss ${r.lossRelDiff}, Δgrad h ${r.gradHiddenRelDiff}, Δgrad W ${r.gradWeightRelDiff}`);
    t.true(r.lossRelDiff! < 1e-5 && r.gradHiddenRelDiff! < 1e-5 && r.gradWeightRelDiff! < 1e-5);
    t.is(r.matmulFlop, 6 * 4 * (16 - 4) * 24 * 80);
    t.true(r.msMedian > 0 && r.msMin <= r.msMedian);
    t.true(Math.abs(r.loss - Math.log(2)) > 1e-3, 'references differ from the policy, so the loss is not log 2');
  }
  const plain = await lossBenchmark({ ...small, seed: 3 });
  t.is(plain.lossRelDiff, null);
  const bf16 = await lossBenchmark({ ...small, seed: 3, dtype: 'bfloat16', compare: true });
  t.log(`bfloat16 fused vs naive: Δloss ${bf16.lossRelDiff}, Δgrad h ${bf16.gradHiddenRelDiff}, Δgrad W ${bf16.gradWeightRelDiff}`);
  t.true(bf16.lossRelDiff! < 1e-2);
});

test('bad options are named', async (t) => {
  await t.throwsAsync(lossBenchmark({ pairs: 0 }), { message: 'Expected an integer in [1, 2147483647] for pairs but received 0' });
  await t.throwsAsync(lossBenchmark({ seq: 8, prompt: 8 }), { message: 'Expected an integer below seq (8) for prompt but received 8' });
  await t.throwsAsync(lossBenchmark({ impl: 'fast' as 'fused' }), { message: /for impl but received "fast"/ });
  await t.throwsAsync(lossBenchmark({ hiden: 8 } as never), { message: /Unknown option 'hiden' for lossBenchmark options/ });
  await t.throwsAsync(lossBenchmark({ device: 'gpu' as never }), { message: /for device but received "gpu"/ });
});
