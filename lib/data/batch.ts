// Tokenized examples -> padded batches as typed arrays for native code.
//
// Pair batch layout (B = size, T = longest row, padded up to padToMultipleOf when set), all arrays row-major
// (row r occupies [r*T, (r+1)*T)):
//   rows 0..B-1   : prompt_ids ++ chosen_ids   of examples 0..B-1
//   rows B..2B-1  : prompt_ids ++ rejected_ids of examples 0..B-1
//   inputIds[r*T + t]      token t of row r; padTokenId after the row's end (right padding)
//   attentionMask[r*T + t] 1 for t < length(r), else 0
//   labels[r*T + t]        already shifted: the token at t+1 when position t+1 is a completion token
//                          (promptLength(r) <= t+1 < length(r)), else -100 (prompt, padding, last position).
//                          So logits at position t are scored against labels[r*T + t].
//   promptLengths[r], lengths[r]: per-row prompt and total token counts (Int32Array(2B)).
// Unpaired batch layout: the same with B rows (prompt ++ completion) and `labelsKto` (Uint8Array(B), 1 = desirable).

import { ValidationError, checkInt, checkTokenIds } from '../validate';
import type { PreferenceExample, TokenizedExample, UnpairedExample } from './formats';
import type { AnyIterable } from './shuffle';

export const IGNORE_INDEX = -100;

export interface BatchOptions {
  batchSize: number;
  padTokenId: number;
  /** Round T up to a multiple of this (default 1). */
  padToMultipleOf?: number;
  /** Drop a final batch smaller than batchSize (default false). */
  dropLast?: boolean;
}

export interface PairBatch {
  inputIds: Int32Array;
  attentionMask: Int32Array;
  labels: Int32Array;
  promptLengths: Int32Array;
  lengths: Int32Array;
  /** padded row length */
  T: number;
  /** number of pairs B (rows = 2B) */
  size: number;
  /** (B) the records' "margin" fields (NaN where a record has none), or null when no record of the batch has one */
  margins: Float64Array | null;
  examples: PreferenceExample[];
}

export interface UnpairedBatch {
  inputIds: Int32Array;
  attentionMask: Int32Array;
  labels: Int32Array;
  promptLengths: Int32Array;
  lengths: Int32Array;
  /** 1 = desirable, 0 = undesirable */
  labelsKto: Uint8Array;
  T: number;
  size: number;
  examples: UnpairedExample[];
}

interface Row {
  prompt: number[];
  completion: number[];
}

function packRows(rows: Row[], padTokenId: number, multiple: number) {
  let T = 1;
  for (const r of rows) T = Math.max(T, r.prompt.length + r.completion.length);
  T = Math.ceil(T / multiple) * multiple;
  const n = rows.length;
  const inputIds = new Int32Array(n * T).fill(padTokenId);
  const attentionMask = new Int32Array(n * T);
  const labels = new Int32Array(n * T).fill(IGNORE_INDEX);
  const promptLengths = new Int32Array(n);
  const lengths = new Int32Array(n);
  rows.forEach((r, i) => {
    const base = i * T;
    const P = r.prompt.length;
    const L = P + r.completion.length;
    inputIds.set(r.prompt, base);
    inputIds.set(r.completion, base + P);
    attentionMask.fill(1, base, base + L);
    // (row i) labels[t] = token t+1 for completion positions t+1 in [P, L)
    for (let t = Math.max(P - 1, 0); t + 1 < L; t++) labels[base + t] = inputIds[base + t + 1];
    promptLengths[i] = P;
    lengths[i] = L;
  });
  return { inputIds, attentionMask, labels, promptLengths, lengths, T };
}

function checkOpts(opts: BatchOptions) {
  return {
    B: checkInt(opts.batchSize, 'batchSize', 1),
    pad: checkInt(opts.padTokenId, 'padTokenId', 0, 2 ** 31 - 1),
    multiple: checkInt(opts.padToMultipleOf ?? 1, 'padToMultipleOf', 1),
    dropLast: opts.dropLast ?? false,
  };
}

/** Builds one pair batch from `examples` (see the layout above). */
export function collatePairs(examples: PreferenceExample[], padTokenId: number, padToMultipleOf = 1): PairBatch {
  examples.forEach((e, i) => {
    checkTokenIds(e.prompt_ids, `examples[${i}].prompt_ids`);
    checkTokenIds(e.chosen_ids, `examples[${i}].chosen_ids`);
    checkTokenIds(e.rejected_ids, `examples[${i}].rejected_ids`);
  });
  const rows: Row[] = [
    ...examples.map((e) => ({ prompt: e.prompt_ids, completion: e.chosen_ids })),
    ...examples.map((e) => ({ prompt: e.prompt_ids, completion: e.rejected_ids })),
  ];
  const margins = examples.some((e) => e.margin !== undefined) ? Float64Array.from(examples, (e) => e.margin ?? NaN) : null;
  return { ...packRows(rows, padTokenId, padToMultipleOf), size: examples.length, margins, examples };
}

/** Builds one unpaired (KTO) batch. */
export function collateUnpaired(examples: UnpairedExample[], padTokenId: number, padToMultipleOf = 1): UnpairedBatch {
  examples.forEach((e, i) => {
    checkTokenIds(e.prompt_ids, `examples[${i}].prompt_ids`);
    checkTokenIds(e.completion_ids, `examples[${i}].completion_ids`);
  });
  const packed = packRows(examples.map((e) => ({ prompt: e.prompt_ids, completion: e.completion_ids })), padTokenId, padToMultipleOf);
  return { ...packed, labelsKto: Uint8Array.from(examples, (e) => (e.label ? 1 : 0)), size: examples.length, examples };
}

async function* chunks<E>(source: AnyIterable<E>, B: number, dropLast: boolean): AsyncGenerator<E[]> {
  let buf: E[] = [];
  for await (const e of source) {
    buf.push(e);
    if (buf.length === B) {
      yield buf;
      buf = [];
    }
  }
  if (buf.length > 0 && !dropLast) yield buf;
}

/** Groups preference examples into pair batches of `batchSize` (the last one may be smaller unless dropLast). */
export async function* batchPairs(source: AnyIterable<TokenizedExample>, opts: BatchOptions): AsyncGenerator<PairBatch> {
  const o = checkOpts(opts);
  for await (const group of chunks(source, o.B, o.dropLast)) {
    group.forEach((e, i) => {
      if (!('chosen_ids' in e)) throw new ValidationError(`Expected preference examples {prompt_ids, chosen_ids, rejected_ids} for batchPairs but received an unpaired example at batch position ${i}`);
    });
    yield collatePairs(group as PreferenceExample[], o.pad, o.multiple);
  }
}

/** Groups unpaired (KTO) examples into batches. */
export async function* batchUnpaired(source: AnyIterable<TokenizedExample>, opts: BatchOptions): AsyncGenerator<UnpairedBatch> {
  const o = checkOpts(opts);
  for await (const group of chunks(source, o.B, o.dropLast)) {
    group.forEach((e, i) => {
      if (!('completion_ids' in e)) throw new ValidationError(`Expected unpaired examples {prompt_ids, completion_ids, label} for batchUnpaired but received a preference pair at batch position ${i}`);
    });
    yield collateUnpaired(group as UnpairedExample[], o.pad, o.multiple);
  }
}
