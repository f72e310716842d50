import test from 'ava';
import { cudaMemory, runtimeInfo, tokenLogprobs, matmulBenchmark, setThreads } from '../../lib';
import { native } from '../../lib/native';

test('runtimeInfo reports the libtorch it was built with', (t) => {
  const info = runtimeInfo();
  t.regex(info.libtorchVersion, /^\d+\.\d+\.\d+$/);
  const [major, minor] = info.libtorchVersion.split('.').map(Number);
  t.true(major > 1 || (major === 1 && minor >= 13));
  t.is(typeof info.cudaAvailable, 'boolean');
  t.true(info.intraOpThreads >= 1);
  // process-group backends: gloo where its headers were found at build time, nccl only on CUDA builds
  t.log(`data-parallel backends: ${info.distBackends.join(', ') || 'none'}`);
  for (const b of info.distBackends) t.true(b === 'gloo' || (b === 'nccl' && info.cudaBuild), b);
});

test('tokenLogprobs equals a float64 log-softmax worked out in JS', async (t) => {
  const V = 7, N = 5;
  const logits = new Float32Array(N * V);
  let s = 12345;
  const rnd = () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 8 - 4;
  for (let i = 0; i < logits.length; i++) logits[i] = rnd();
  const targets = Int32Array.from({ length: N }, (_, i) => (i * 3) % V);
  const got = await tokenLogprobs(logits, targets, V);
  for (let r = 0; r < N; r++) {
    let max = -Infinity;
    for (let v = 0; v < V; v++) max = Math.max(max, logits[r * V + v]);
    let sum = 0;
    for (let v = 0; v < V; v++) sum += Math.exp(logits[r * V + v] - max);
    const want = logits[r * V + targets[r]] - max - Math.log(sum);
    t.true(Math.abs(got[r] - want) < 1e-5, `row ${r}: ${got[r]} vs ${want}`);
  }
});

test('native errors become rejected Promises with the JS caller stack, not crashes', async (t) => {
  const err = await t.throwsAsync(native().tokenLogprobs(new Float32Array(6), new Int32Array([5, 0]), 2, 3));
  t.regex(err!.message, /targets must be in \[0, 3\)/);
  const wrapped = await t.throwsAsync(async function callerFrame() {
    const { callNative } = await import('../../lib/native');
    await callNative('tokenLogprobs()', () => native().tokenLogprobs(new Float32Array(6), new Int32Array([9, 0]), 2, 3));
  });
  t.regex(wrapped!.stack ?? '', /callerFrame/);
});

test('wrong argument types and counts throw TypeErrors naming the argument', (t) => {
  const a = native();
  t.throws(() => (a.tokenLogprobs as any)(), { instanceOf: TypeError, message: /Expected 4 argument\(s\)/ });
  t.throws(() => (a.tokenLogprobs as any)([1, 2], new Int32Array(1), 1, 2), { message: /Expected a Float32Array for logits but received Array/ });
  t.throws(() => (a.tokenLogprobs as any)(new Float32Array(2), new Int32Array(1), 1.5, 2), { message: /Expected an integer for rows/ });
  t.throws(() => (a.tokenLogprobs as any)(new Float32Array(3), new Int32Array(1), 1, 2), { message: /Expected 2 elements/ });
  t.throws(() => (a.runtimeInfo as any)(1), { message: /Expected 0 argument/ });
  t.throws(() => (a.configure as any)('x', 0), { message: /Expected an integer for intraOpThreads but received string/ });
  t.throws(() => a.configure(-1, 0), { message: /intra-op threads must be in/ });
});

test('native checks of values reject the Promise with the reason', async (t) => {
  await t.throwsAsync(native().matmulBenchmark(4, 1, 'tpu', 'float32'), { message: /Expected 'cpu', 'cuda' or 'cuda:N' for device but received 'tpu'/ });
});

test('TS validation rejects bad options before they reach native code', async (t) => {
  await t.throwsAsync(tokenLogprobs(new Float32Array(4), new Int32Array([0, 9]), 2), { message: /Expected an integer in \[0, 1\] for targets\[1\] but received 9/ });
  await t.throwsAsync(matmulBenchmark(0), { message: /Expected an integer in \[1, 32768\] for n but received 0/ });
  t.throws(() => setThreads(0), { message: /intraOpThreads/ });
});

test('the event loop keeps turning while a native call runs', async (t) => {
  let ticks = 0;
  const timer = setInterval(() => ticks++, 5);
  const t0 = Date.now();
  const gflops = await matmulBenchmark(384, 60);
  const elapsed = Date.now() - t0;
  clearInterval(timer);
  t.true(gflops > 0);
  t.log(`matmul ${gflops.toFixed(1)} GFLOP/s over ${elapsed} ms; timer fired ${ticks} times`);
  // The timer must have fired roughly every 5 ms while the native work ran (allow a slow, loaded machine).
  t.true(elapsed < 50 || ticks >= Math.floor(elapsed / 5 / 4), `only ${ticks} ticks in ${elapsed} ms`);
});

test('cudaMemory: a CPU device is refused in TS; without CUDA the native error says why', (t) => {
  t.throws(() => cudaMemory('cpu'), { message: 'Expected a CUDA device (\'cuda\' or \'cuda:N\') for device but received "cpu"' });
  t.throws(() => cudaMemory('cuda', 'yes' as unknown as boolean), { message: /Expected a boolean for resetPeak/ });
  t.throws(() => (native().cudaMemory as (...a: unknown[]) => unknown)('cuda'), { message: /cudaMemory\(device, resetPeak\)/ });
  if (!runtimeInfo().cudaAvailable) t.throws(() => cudaMemory('cuda'), { message: /CUDA is not available/ });
  else t.true(cudaMemory('cuda').reservedBytes >= 0);
});
