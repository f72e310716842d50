// The DPO loss alone (lm-head + log-probs + sigmoid DPO, forward + backward) on random inputs, timed off the JS
// thread: torch-dpo's fused path or the naive full-logits path, optionally checked against each other. Used by
// bench/loss_step.ts; a diagnostic, like matmulBenchmark.
import { callNative } from './native';
import { addon } from './runtime';
import { checkBool, checkDevice, checkDType, checkInt, checkKnownKeys, checkObject, checkOneOf, Device, DType, fail } from './validate';

export interface LossBenchmarkOptions {
  /** pairs per batch (2·pairs sequences); default 4 */
  pairs?: number;
  /** tokens per sequence; default 1024 */
  seq?: number;
  /** leading tokens of each sequence that are not scored; default 0 */
  prompt?: number;
  /** hidden size; default 2048 */
  hidden?: number;
  /** vocabulary size; default 128256 */
  vocab?: number;
  /** timed passes (median and min reported); default 10 */
  iters?: number;
  /** untimed passes first; default 3 */
  warmup?: number;
  /** fused: tokens per lm-head chunk; default 1024 */
  chunkRows?: number;
  /** 'fused' (torch-dpo's) or 'naive' (full logits); default 'fused' */
  impl?: 'fused' | 'naive';
  /** also run the other implementation once on the same inputs and report the relative differences; default false */
  compare?: boolean;
  /** seed of the random inputs; default 0 */
  seed?: number;
  /** default 'cpu' */
  device?: Device;
  /** default 'float32' */
  dtype?: DType;
}

export interface LossBenchmarkResult {
  msMedian: number;
  msMin: number;
  /** CUDA: peak bytes allocated during the timed passes above what was held before them (the inputs); CPU: 0 */
  peakBytes: number;
  loss: number;
  /** 6·M·H·V over the M scored tokens: the logits, grad-hidden and grad-weight matmuls */
  matmulFlop: number;
  /** with compare (else null): relative differences against the other implementation */
  lossRelDiff: number | null;
  gradHiddenRelDiff: number | null;
  gradWeightRelDiff: number | null;
}

const KNOWN = ['pairs', 'seq', 'prompt', 'hidden', 'vocab', 'iters', 'warmup', 'chunkRows', 'impl', 'compare', 'seed', 'device', 'dtype'];

export async function lossBenchmark(options: LossBenchmarkOptions = {}): Promise<LossBenchmarkResult> {
  const o = checkObject(options, 'options') as LossBenchmarkOptions;
  checkKnownKeys(o as Record<string, unknown>, KNOWN, 'lossBenchmark options');
  const native: Record<string, unknown> = {};
  for (const [k, min] of [['pairs', 1], ['seq', 2], ['prompt', 0], ['hidden', 1], ['vocab', 2], ['iters', 1], ['warmup', 0], ['chunkRows', 1], ['seed', 0]] as const) {
    if (o[k] !== undefined) native[k] = checkInt(o[k], k, min, 2 ** 31 - 1);
  }
  if (o.prompt !== undefined && o.prompt >= (o.seq ?? 1024)) fail(`an integer below seq (${o.seq ?? 1024})`, 'prompt', o.prompt);
  if (o.impl !== undefined) native.impl = checkOneOf(o.impl, 'impl', ['fused', 'naive'] as const);
  if (o.compare !== undefined) native.compare = checkBool(o.compare, 'compare');
  const device = o.device === undefined ? 'cpu' : checkDevice(o.device, 'device');
  const dtype = o.dtype === undefined ? 'float32' : checkDType(o.dtype, 'dtype');
  const json = await callNative('lossBenchmark()', () => addon().lossBenchmark(JSON.stringify(native), device, dtype));
  return JSON.parse(json) as LossBenchmarkResult;
}
