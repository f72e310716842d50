// CUDA-only checks: run where libtorch has CUDA and a device is visible; elsewhere each test says why it skipped.
import test from 'ava';
import * as path from 'node:path';
import { Model } from '../../lib/model';
import { cudaMemory, runtimeInfo } from '../../lib/runtime';
import { DPOTrainer } from '../../lib/trainer/dpo_trainer';
import { makeModelDir, pairRecords, tmpDir, writeJsonl } from './helpers/fixtures';

const cuda = runtimeInfo().cudaAvailable;
const work = tmpDir('cuda');

test('CUDA float32 and bfloat16 log-probs agree with the CPU', async (t) => {
  if (!cuda) return t.log('SKIPPED: no CUDA device in this libtorch build / on this machine'), t.pass();
  const dir = await makeModelDir(path.join(work, 'm'), 1);
  const seqs = [[1, 4, 5, 33, 7, 6, 20, 2], [1, 9, 10]];
  await using cpu = await Model.load(dir);
  await using g32 = await Model.load(dir, { device: 'cuda', dtype: 'float32' });
  await using g16 = await Model.load(dir, { device: 'cuda', dtype: 'bfloat16' });
  const a = await cpu.tokenLogps(seqs);
  const b = await g32.tokenLogps(seqs);
  const c = await g16.tokenLogps(seqs);
  a.forEach((row, i) => row.forEach((x, j) => {
    t.true(Math.abs(x - b[i][j]) < 1e-4, `float32 cuda ${b[i][j]} vs cpu ${x}`);
    t.true(Math.abs(x - c[i][j]) < 0.1 + 0.02 * Math.abs(x), `bfloat16 cuda ${c[i][j]} vs cpu ${x}`);
  }));
});

test('a CUDA DPO step matches the CPU step', async (t) => {
  if (!cuda) return t.log('SKIPPED: no CUDA device in this libtorch build / on this machine'), t.pass();
  const dir = await makeModelDir(path.join(work, 'p'), 2);
  const data = writeJsonl(path.join(work, 'd.jsonl'), pairRecords(8, 3));
  const losses: number[][] = [];
  for (const device of ['cpu', 'cuda'] as const) {
    await using tr = await DPOTrainer.create({ policy: dir, reference: dir, data, outputDir: path.join(work, device), device, maxSteps: 3, perDeviceTrainBatchSize: 4, loggingSteps: 1, saveSteps: 0, learningRate: 1e-3, shuffle: false });
    const l: number[] = [];
    for await (const m of tr.train()) l.push(m.loss);
    losses.push(l);
  }
  losses[0].forEach((x, i) => t.true(Math.abs(x - losses[1][i]) < 1e-4, `step ${i + 1}: cpu ${x} vs cuda ${losses[1][i]}`));
});

test('cudaMemory reports the allocator: a loaded model holds at least its weights; the peak resets', async (t) => {
  if (!cuda) return t.log('SKIPPED: no CUDA device in this libtorch build / on this machine'), t.pass();
  const dir = await makeModelDir(path.join(work, 'mem'), 4);
  const before = cudaMemory('cuda', true);
  await using m = await Model.load(dir, { device: 'cuda', dtype: 'float32' });
  const loaded = cudaMemory('cuda');
  const weightBytes = 4 * (50 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 176 + 2 * 64) + 64); // demo config, float32
  t.true(loaded.allocatedBytes - before.allocatedBytes >= weightBytes * 0.9, `${loaded.allocatedBytes - before.allocatedBytes} bytes for ${weightBytes} bytes of weights`);
  await m.tokenLogps([[1, 4, 5, 33, 7, 6, 20, 2]]);
  const after = cudaMemory('cuda', true);
  t.true(after.peakAllocatedBytes >= after.allocatedBytes && after.reservedBytes >= after.allocatedBytes);
  t.is(cudaMemory('cuda').peakAllocatedBytes, after.allocatedBytes, 'peak restarts from the current allocation');
});
