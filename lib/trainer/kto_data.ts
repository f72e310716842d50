// The KTO trainer's view of a data file: unpaired examples {prompt, completion, label} (a preference pair counts as
// two: its chosen completion desirable, its rejected one undesirable), ordered, sharded and resumable like the pair
// batches, and each batch extended with the mismatched prompt/completion pairs of the KL estimate.
//
// KTO batch layout (N = size, 2N rows, right padded to T, as in lib/data/batch.ts):
//   rows 0..N-1   prompt_i ++ completion_i
//   rows N..2N-1  prompt_i ++ completion_{(i-1) mod N} (TRL's choice: the completions rotated by one within the
//                 batch), the completion cut so that the row fits maxLength; a batch of one example pairs it
//                 with itself.
import type { Tokenizer } from '../tokenizer';
import { collateUnpaired, isPreference, newStats, readRecords, TokenizeStats } from '../data';
import type { UnpairedExample } from '../data';
import { sequenceKey } from '../ref_cache';
import { orderedExamples, PairSourceOptions, Shard, tokenizedExamples } from './data_source';

export interface IndexedUnpaired extends UnpairedExample {
  index: number;
  source: string;
}

export interface KTOBatch {
  inputIds: Int32Array;
  attentionMask: Int32Array;
  labels: Int32Array;
  /** padded row length */
  T: number;
  /** examples N (rows = 2N) */
  size: number;
  /** (N) 1 = desirable */
  desirable: Int32Array;
  /** (2N) reference-cache keys of the rows */
  keys: string[];
  examples: IndexedUnpaired[];
}

/** Unpaired examples of the file in file order: preference records are split into a desirable and an undesirable one. */
export async function* unpairedExamples(o: PairSourceOptions, tokenizer: Tokenizer, stats: TokenizeStats = newStats()): AsyncGenerator<UnpairedExample> {
  for await (const ex of tokenizedExamples(o, tokenizer, stats)) {
    if (isPreference(ex)) {
      yield { prompt_ids: ex.prompt_ids, completion_ids: ex.chosen_ids, label: true };
      yield { prompt_ids: ex.prompt_ids, completion_ids: ex.rejected_ids, label: false };
    } else {
      yield ex;
    }
  }
}

/** Unpaired examples in a data file (preference records count twice); one streaming pass, no tokenization. */
export async function countUnpairedExamples(file: string): Promise<number> {
  let n = 0;
  for await (const r of readRecords(file)) {
    const v = r.value as Record<string, unknown> | null;
    n += v && typeof v === 'object' && ('chosen' in v || 'chosen_ids' in v) ? 2 : 1;
  }
  return n;
}

/** Builds the 2N-row KTO batch of `examples` (see the layout above). */
export function collateKTO(examples: IndexedUnpaired[], padTokenId: number, maxLength: number): KTOBatch {
  const N = examples.length;
  const kl: UnpairedExample[] = examples.map((e, i) => {
    const other = examples[(i - 1 + N) % N].completion_ids;
    const room = Math.max(1, maxLength - e.prompt_ids.length);
    return { prompt_ids: e.prompt_ids, completion_ids: other.slice(0, room), label: false };
  });
  const c = collateUnpaired([...examples, ...kl], padTokenId);
  return {
    inputIds: c.inputIds,
    attentionMask: c.attentionMask,
    labels: c.labels,
    T: c.T,
    size: N,
    desirable: Int32Array.from(examples, (e) => (e.label ? 1 : 0)),
    keys: [...examples, ...kl].map((e) => sequenceKey(e.prompt_ids, e.completion_ids)),
    examples,
  };
}

/** KTO batches of epoch `epoch` after `skip` examples (of all ranks), sharded like pairBatches. */
export async function* ktoBatches(o: PairSourceOptions, tokenizer: Tokenizer, epoch: number, skip: number, stats?: TokenizeStats, shard?: Shard): AsyncGenerator<KTOBatch> {
  const pad = tokenizer.padTokenId ?? tokenizer.eosTokenId ?? 0;
  let buf: IndexedUnpaired[] = [];
  for await (const ex of orderedExamples(unpairedExamples(o, tokenizer, stats), o, epoch, skip, shard)) {
    buf.push(ex);
    if (buf.length === o.perDeviceTrainBatchSize) {
      yield collateKTO(buf, pad, o.maxLength);
      buf = [];
    }
  }
  if (buf.length > 0) yield collateKTO(buf, pad, o.maxLength);
}
