// The trainer's view of a data file: tokenized, truncated, shuffled per epoch (seeded), batched pairs, resumable
// at an example offset. Built from lib/data's streaming pieces; memory stays bounded by the shuffle buffer.
import type { Tokenizer } from '../tokenizer';
import { batchPairs, isPreference, newStats, PairBatch as DataPairBatch, readRecords, shuffleBuffer, tokenizeExamples, TokenizeStats } from '../data';
import type { PreferenceExample, TokenizedExample } from '../data';
import type { ResolvedDPOOptions } from './options';

export interface IndexedExample extends PreferenceExample {
  /** position of the example in this epoch's order (0-based) */
  index: number;
  source?: string;
  line?: number;
}

export interface PairBatch extends Omit<DataPairBatch, 'examples'> {
  examples: IndexedExample[];
}

/** Records in a data file (one pass over it, streaming). */
export async function countExamples(file: string): Promise<number> {
  let n = 0;
  for await (const _ of readRecords(file)) n++;
  return n;
}

export interface PairSourceOptions {
  data: string;
  maxLength: number;
  maxPromptLength: number;
  truncationMode: 'keep_end' | 'keep_start';
  overlongPolicy: 'truncate' | 'drop' | 'error';
  perDeviceTrainBatchSize: number;
  shuffle: boolean;
  shuffleBufferSize: number;
  seed: number;
}

/** Tokenized examples (pairs or unpaired) of `o.data` in file order, truncated as the options say. */
export function tokenizedExamples(o: PairSourceOptions, tokenizer: Tokenizer, stats: TokenizeStats = newStats()): AsyncGenerator<TokenizedExample> {
  return tokenizeExamples(readRecords(o.data), tokenizer, {
    maxLength: o.maxLength,
    maxPromptLength: o.maxPromptLength,
    truncationMode: o.truncationMode,
    overlongPolicy: o.overlongPolicy,
    stats,
  });
}

/** Tokenized preference examples of `file` in file order; unpaired records are an error naming the file. */
export async function* preferenceExamples(o: PairSourceOptions, tokenizer: Tokenizer, stats: TokenizeStats = newStats()): AsyncGenerator<PreferenceExample> {
  for await (const ex of tokenizedExamples(o, tokenizer, stats)) {
    if (!isPreference(ex)) throw new Error(`${o.data}: an unpaired (KTO) record where preference pairs are expected`);
    yield ex;
  }
}

/** Data-parallel sharding: this process is `rank` of `worldSize`. */
export interface Shard {
  rank: number;
  worldSize: number;
}

/**
 * Batches of epoch `epoch` starting after `skip` examples (resume). The order depends only on the file, the seed
 * and the epoch, so a resumed run sees exactly the examples an uninterrupted one would.
 * With `shard`, the epoch's order is cut into groups of worldSize consecutive examples and this rank takes the
 * example at index % worldSize == rank of each complete group (an incomplete last group is dropped), so every rank
 * gets the same number of examples and every example is seen once per epoch across the ranks; `skip` counts
 * examples of all ranks.
 */
export async function* pairBatches(o: PairSourceOptions | ResolvedDPOOptions, tokenizer: Tokenizer, epoch: number, skip: number, stats?: TokenizeStats, shard?: Shard): AsyncGenerator<PairBatch> {
  const pad = tokenizer.padTokenId ?? tokenizer.eosTokenId ?? 0;
  const examples = orderedExamples(preferenceExamples(o, tokenizer, stats), o, epoch, skip, shard);
  for await (const b of batchPairs(examples, { batchSize: o.perDeviceTrainBatchSize, padTokenId: pad })) {
    yield b as unknown as PairBatch;
  }
}

/**
 * This rank's examples of epoch `epoch` from `base` (file order), with their index in the epoch's order: shuffled
 * with the seeded buffer when o.shuffle, cut into groups of worldSize (see pairBatches), starting after `skip`
 * examples of all ranks. When `skip` is not a multiple of worldSize (a resume onto a different world size) it is
 * rounded up to the next group, so that every rank gets the same number of examples.
 */
export async function* orderedExamples<E extends object>(
  base: AsyncIterable<E>, o: Pick<PairSourceOptions, 'shuffle' | 'shuffleBufferSize' | 'seed' | 'data'>, epoch: number, skip: number, shard?: Shard,
): AsyncGenerator<E & { index: number; source: string }> {
  const W = shard?.worldSize ?? 1;
  const rank = shard?.rank ?? 0;
  const start = Math.ceil(skip / W) * W;
  const src = o.shuffle ? shuffleBuffer(base, { bufferSize: o.shuffleBufferSize, seed: (o.seed + epoch * 7919) >>> 0 }) : base;
  let index = 0;
  let mine: (E & { index: number; source: string }) | undefined; // this rank's member of the current group, held until the group is complete
  for await (const ex of src) {
    if (index % W === rank && index >= start) mine = { ...ex, index, source: o.data };
    if (index % W === W - 1) {
      if (mine) yield mine;
      mine = undefined;
    }
    index++;
  }
}
