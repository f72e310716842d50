// Runtime facts and process-wide settings: libtorch version, CUDA, threads; plus small model-free native ops.
import * as os from 'node:os';
import { callNative, callNativeSync, native, NativeDeviceMemory, NativeRuntimeInfo } from './native';
import { checkBool, checkDevice, checkDType, fail, checkFloat32Array, checkInt, checkInt32Array, Device, DType } from './validate';

export type RuntimeInfo = NativeRuntimeInfo;
export type DeviceMemory = NativeDeviceMemory;

let configured = false;

/** Thread settings chosen once at load: intra-op threads = $TORCH_DPO_THREADS or the number of cores. */
function ensureConfigured(): void {
  if (configured) return;
  configured = true;
  const env = process.env.TORCH_DPO_THREADS;
  const intra = env !== undefined && env !== '' ? checkInt(Number(env), 'TORCH_DPO_THREADS', 1, 4096) : os.availableParallelism();
  callNativeSync('configure', () => native().configure(intra, 0));
}

/** The loaded addon, configured. Every module calls this instead of native(). */
export function addon() {
  ensureConfigured();
  return native();
}

export function runtimeInfo(): RuntimeInfo {
  return callNativeSync('runtimeInfo()', () => addon().runtimeInfo());
}

/**
 * The CUDA caching allocator's statistics of a device, in bytes (torch.cuda.memory_allocated / max_memory_allocated /
 * memory_reserved); `resetPeak` restarts the peak after reading it. Throws on 'cpu' or without a CUDA build.
 */
export function cudaMemory(device: Device = 'cuda', resetPeak = false): DeviceMemory {
  if (checkDevice(device, 'device') === 'cpu') fail("a CUDA device ('cuda' or 'cuda:N')", 'device', device);
  checkBool(resetPeak, 'resetPeak');
  return callNativeSync('cudaMemory()', () => addon().cudaMemory(device, resetPeak));
}

/** Sets libtorch's intra-op thread count (inter-op threads can be set once per process, before any work). */
export function setThreads(intraOpThreads: number, interOpThreads = 0): void {
  checkInt(intraOpThreads, 'intraOpThreads', 1, 4096);
  checkInt(interOpThreads, 'interOpThreads', 0, 4096);
  ensureConfigured();
  callNativeSync('setThreads()', () => native().configure(intraOpThreads, interOpThreads));
}

/**
 * log_softmax(logits)[i, targets[i]] for each of `rows` rows of a (rows, vocab) row-major Float32Array, computed
 * off the JS thread.
 */
export async function tokenLogprobs(logits: Float32Array, targets: Int32Array, vocab: number): Promise<Float32Array> {
  checkInt(vocab, 'vocab', 1);
  checkFloat32Array(logits, 'logits');
  const rows = logits.length / vocab;
  if (!Number.isInteger(rows)) checkFloat32Array(logits, 'logits', Math.ceil(rows) * vocab);
  checkInt32Array(targets, 'targets', rows);
  for (let i = 0; i < targets.length; i++) checkInt(targets[i], `targets[${i}]`, 0, vocab - 1);
  return callNative('tokenLogprobs()', () => addon().tokenLogprobs(logits, targets, rows, vocab));
}

/** GFLOP/s of an n x n matmul on a device, off the JS thread. */
export async function matmulBenchmark(n: number, iters = 10, device: Device = 'cpu', dtype: DType = 'float32'): Promise<number> {
  checkInt(n, 'n', 1, 32768);
  checkInt(iters, 'iters', 1, 100000);
  checkDevice(device, 'device');
  checkDType(dtype, 'dtype');
  return callNative('matmulBenchmark()', () => addon().matmulBenchmark(n, iters, device, dtype));
}
