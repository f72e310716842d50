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
}

export interface NativeAddon {
  abiVersion: number;
  runtimeInfo(): NativeRuntimeInfo;
  configure(intraOpThreads: number, interOpThreads: number): void;
  tokenLogprobs(logits: Float32Array, targets: Int32Array, rows: number, vocab: number): Promise<Float32Array>;
  matmulBenchmark(n: number, iters: number, device: string, dtype: string): Promise<number>;
}

/** The addon ABI this lib/ expects (bumped with any breaking change of the declarations above). */
export const EXPECTED_ABI = 1;

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
