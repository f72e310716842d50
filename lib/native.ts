// The one typed boundary to the native addon: every export of native/napi/*.cpp is declared here, and nothing
// else in lib/ touches the addon object directly. Public classes wrap these declarations.
import * as path from 'node:path';
import * as fs from 'node:fs';

export interface NativeRuntimeInfo {
  libtorchVersion: string;
  cudaAvailable: boolean;
  cudaDeviceCount: number;
  intraOpThreads: number;
  interOpThreads: number;
  cudaBuild: boolean;
  parallelInfo: string;
  distBackends: string[]; // process-group backends this build can create: 'gloo', 'nccl'
}

export interface NativeDeviceMemory {
  allocatedBytes: number; // bytes in live tensors now
  peakAllocatedBytes: number; // the most bytes in live tensors since the last peak reset
  reservedBytes: number; // bytes the caching allocator holds from the driver
}

export interface NativeSequenceLogps {
  logps: Float64Array; // (rows) summed log-probs of scored tokens
  counts: Int32Array; // (rows) scored tokens
  logitsSum: Float64Array; // (rows) sum over scored tokens of the mean logit
}

/** A loaded causal LM (native/napi/model_napi.cpp). Arrays are row-major (rows, T); labels are shifted, -100 = not scored. */
export interface NativeModelHandle {
  config(): string;
  /** paddingFree: run the model on packed rows (same results, no compute on padding); default false. */
  sequenceLogps(inputIds: Int32Array, attentionMask: Int32Array, labels: Int32Array, rows: number, T: number, chunkRows: number, paddingFree?: boolean): Promise<NativeSequenceLogps>;
  /** (rows, T) log p(x_t | x_<t) at position t (0 at t = 0 and at pads). */
  tokenLogps(inputIds: Int32Array, attentionMask: Int32Array, rows: number, T: number): Promise<Float32Array>;
  /** Left-padded prompts (rows, T) -> new tokens (rows, maxNewTokens) padded with -1 after a row stops. */
  generate(inputIds: Int32Array, attentionMask: Int32Array, rows: number, T: number, optionsJson: string): Promise<Int32Array>;
  save(dir: string, dtype: string): Promise<void>;
  /** LoRA (native/napi/lora_napi.cpp). configJson: {r, alpha, dropout, targetModules}; resolves to adapterInfo(). */
  attachLora(configJson: string, seed: number): Promise<string>;
  /** Attaches the PEFT adapter of `dir` (adapter_config.json + adapter_model.safetensors); resolves to adapterInfo(). */
  loadAdapter(dir: string): Promise<string>;
  saveAdapter(dir: string, baseModel: string): Promise<void>;
  /** W += (alpha/r)·B·A for every adapter, then removes them. */
  mergeAdapters(): Promise<void>;
  /** JSON {r, alpha, dropout, targetModules, fanInFanOut, modules, trainableParameters}, or "null" without adapters. */
  adapterInfo(): string;
  /** sequenceLogps with the LoRA adapters off (the base model), switched inside the model's lock. */
  baseSequenceLogps(inputIds: Int32Array, attentionMask: Int32Array, labels: Int32Array, rows: number, T: number, chunkRows: number, paddingFree?: boolean): Promise<NativeSequenceLogps>;
  /** Right-padded (rows, T) -> (rows) rewards: the score head at each row's last token (score-head models only). */
  rewards(inputIds: Int32Array, attentionMask: Int32Array, rows: number, T: number): Promise<Float64Array>;
  dispose(): void;
  readonly disposed: boolean;
}

export interface NativeMicroStep {
  loss: number;
  chosenRewards: Float64Array; // (P)
  rejectedRewards: Float64Array; // (P)
  policyLogps: Float64Array; // (2P)
  counts: Int32Array; // (2P)
  logitsSum: Float64Array; // (2P)
  tokens: number;
}

/** A KTO micro-step over N examples (native PreferenceTrainer::accumulate_kto). */
export interface NativeKtoMicroStep {
  loss: number;
  kl: number; // z0, the clamped KL estimate the loss used
  rewards: Float64Array; // (N) β·(log π − log πref)
  policyLogps: Float64Array; // (N)
  counts: Int32Array; // (N)
  logitsSum: Float64Array; // (N)
  tokens: number;
}

/** The training step over a policy model (native/napi/trainer_napi.cpp). */
export interface NativeTrainerHandle {
  /** sync: the last micro-batch before step(); with data parallelism its backward all-reduces gradient buckets as they become ready.
   *  margins: (P) per-pair margins of a reward model's loss −log σ(r_w − r_l − m), or null (the trainer's margin). */
  accumulate(inputIds: Int32Array, attentionMask: Int32Array, labels: Int32Array, refLogps: Float64Array | null, rows: number, T: number, scale: number, sync: boolean, margins: Float64Array | null): Promise<NativeMicroStep>;
  evaluate(inputIds: Int32Array, attentionMask: Int32Array, labels: Int32Array, refLogps: Float64Array | null, rows: number, T: number, margins: Float64Array | null): Promise<NativeMicroStep>;
  /** KTO (a trainer whose config has "kto"): rows = 2N (N examples, then N mismatched pairs), desirable (N) 0/1. */
  accumulateKto(inputIds: Int32Array, attentionMask: Int32Array, labels: Int32Array, refLogps: Float64Array | null, desirable: Int32Array, rows: number, T: number, scale: number, sync: boolean): Promise<NativeKtoMicroStep>;
  evaluateKto(inputIds: Int32Array, attentionMask: Int32Array, labels: Int32Array, refLogps: Float64Array | null, desirable: Int32Array, rows: number, T: number): Promise<NativeKtoMicroStep>;
  step(lr: number, maxGradNorm: number): Promise<{ gradNorm: number; skipped: boolean }>;
  saveState(path: string): Promise<void>;
  loadState(path: string): Promise<void>;
  /** Joins a c10d group (TCPStore at masterAddr:masterPort; backend 'gloo' or 'nccl', see runtimeInfo().distBackends)
   *  and copies rank 0's parameters; step() then all-reduces gradients (mean; overlap: bucket by bucket during the last
   *  backward before step()). Rejects, naming the master and world size, when the rendezvous times out. */
  joinDataParallel(rank: number, worldSize: number, localRank: number, masterAddr: string, masterPort: number, timeoutMs: number, overlap: boolean, backend: string): Promise<void>;
  /** Element-wise sums over the ranks (the values themselves without a group). */
  allreduceSum(values: Float64Array): Promise<Float64Array>;
  /** Waits for every rank (resolves at once without a group). */
  barrier(): Promise<void>;
  dispose(): void;
  readonly disposed: boolean;
}

export interface NativeAddon {
  abiVersion: number;
  runtimeInfo(): NativeRuntimeInfo;
  configure(intraOpThreads: number, interOpThreads: number): void;
  cudaMemory(device: string, resetPeak: boolean): NativeDeviceMemory;
  tokenLogprobs(logits: Float32Array, targets: Int32Array, rows: number, vocab: number): Promise<Float32Array>;
  matmulBenchmark(n: number, iters: number, device: string, dtype: string): Promise<number>;
  /** The DPO loss alone on random inputs, timed (native/core/loss_benchmark.h); resolves to the result as JSON. */
  lossBenchmark(optionsJson: string, device: string, dtype: string): Promise<string>;
  /** head 'score': a reward model (a causal checkpoint's lm_head is replaced by a score head drawn with `seed`). */
  loadModel(dir: string, device: string, dtype: string, head?: '' | 'score', seed?: number): Promise<NativeModelHandle>;
  createModel(configJson: string, device: string, dtype: string, seed: number): Promise<NativeModelHandle>;
  /** configJson: {loss: {terms: [{type, weight}], beta, labelSmoothing, referenceFree}, optimizer: {type, weightDecay, beta1, beta2, eps, momentum}, chunkRows, paddingFree?} */
  createTrainer(policy: NativeModelHandle, configJson: string): NativeTrainerHandle;
}

/** The addon ABI this lib/ expects (bumped with any breaking change of the declarations above). */
export const EXPECTED_ABI = 2;

/** Where the addon is looked for, first hit wins: $TORCH_DPO_ADDON, cmake-js's build/Release, node-gyp's build-gyp/Release. */
export function addonCandidates(): string[] {
  const root = path.resolve(__dirname, '..', '..');
  const list = [path.join(root, 'build', 'Release', 'torch_dpo.node'), path.join(root, 'build-gyp', 'Release', 'torch_dpo.node')];
  return process.env.TORCH_DPO_ADDON ? [path.resolve(process.env.TORCH_DPO_ADDON)] : list;
}

let cached: NativeAddon | undefined;

/** Loads the addon once; a missing or incompatible build becomes one clear Error saying how to fix it. */
export function native(): NativeAddon {
  if (cached) return cached;
  const candidates = addonCandidates();
  const file = candidates.find((f) => fs.existsSync(f));
  if (!file) {
    throw new Error(
      `torch-dpo: the native addon is not built (looked for ${candidates.join(', ')}). Run \`npm run build:native\` ` +
        '(needs libtorch: see README, "Building")',
    );
  }
  let addon: NativeAddon;
  try {
    addon = require(file) as NativeAddon;
  } catch (e) {
    const msg = (e as Error).message;
    if (/NODE_MODULE_VERSION|was compiled against a different Node\.js version|invalid ELF|wrong ELF class/.test(msg)) {
      throw new Error(`torch-dpo: ${file} was built for another Node.js or platform (${msg.split('\n')[0]}). Rebuild it: \`npm run build:native\``);
    }
    if (/lib(torch|c10)[^ ]*\.so/.test(msg)) {
      throw new Error(`torch-dpo: ${file} cannot find libtorch (${msg.split('\n')[0]}). Rebuild against an installed libtorch: \`npm run build:native\``);
    }
    throw new Error(`torch-dpo: cannot load ${file}: ${msg}`);
  }
  if (addon.abiVersion !== EXPECTED_ABI) {
    throw new Error(`torch-dpo: ${file} has addon ABI ${addon.abiVersion}, this lib/ expects ${EXPECTED_ABI}. Rebuild it: \`npm run build:native\``);
  }
  cached = addon;
  return addon;
}

/**
 * Calls an async native function so that a rejection carries the JS caller's stack (native rejections have none).
 * Every Promise-returning native call goes through here.
 */
export async function callNative<T>(what: string, fn: () => Promise<T>): Promise<T> {
  const caller = new Error();
  try {
    return await fn();
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    const wrapped = new Error(`${what}: ${err.message}`);
    wrapped.stack = `Error: ${what}: ${err.message}\n${(caller.stack ?? '').split('\n').slice(1).join('\n')}`;
    throw wrapped;
  }
}

/** Synchronous native calls: prefixes the message with what was being done, keeps the JS stack. */
export function callNativeSync<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    const wrapped = err instanceof TypeError ? new TypeError(`${what}: ${err.message}`) : new Error(`${what}: ${err.message}`);
    throw wrapped;
  }
}
