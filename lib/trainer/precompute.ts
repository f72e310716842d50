// Reference log-prob precompute: one no-grad pass of the reference model over a data file, stored in the
// content-keyed cache so that training never needs the reference model. Only examples not yet cached are computed.
// KTO runs also need the mismatched pairs of their batches: precomputeKTOReference replays the run's batches.
import { Model } from '../model';
import { RefLogpCache, referenceIdentity, sequenceKey } from '../ref_cache';
import { batchPairs, newStats } from '../data';
import { checkBool, checkInt, checkObject, checkOneOf, checkString } from '../validate';
import { preferenceExamples } from './data_source';
import { ktoBatches } from './kto_data';
import type { DType, Device } from '../validate';

export interface PrecomputeOptions {
  /** Reference model directory. Required. */
  reference: string;
  /** Data file (.jsonl / .parquet). Required. */
  data: string;
  /** Cache directory (created when missing). Required. */
  cache: string;
  /** Pairs per forward batch; default 16. */
  batchSize?: number;
  /** Same truncation settings as training (they change the token ids, hence the keys); defaults as DPOTrainer. */
  maxLength?: number;
  maxPromptLength?: number;
  truncationMode?: 'keep_end' | 'keep_start';
  overlongPolicy?: 'truncate' | 'drop' | 'error';
  device?: Device;
  dtype?: DType;
  chunkRows?: number;
  /** Pack each batch's sequences into fewer rows for the forward (same values, no compute on padding); default false. */
  paddingFree?: boolean;
  /** Called after each batch. */
  onProgress?: (p: PrecomputeProgress) => void;
}

export interface PrecomputeProgress {
  examples: number; // examples seen
  computed: number; // sequences computed now
  cached: number; // sequences already in the cache
  tokensPerSecond: number;
}

/** The options both precompute functions share, checked, with their defaults. */
function resolveCommon(opts: PrecomputeOptions) {
  checkObject(opts, 'precompute options');
  const reference = checkString(opts.reference, 'reference', { nonEmpty: true });
  const data = checkString(opts.data, 'data', { nonEmpty: true });
  const cachePath = checkString(opts.cache, 'cache', { nonEmpty: true });
  const maxLength = checkInt(opts.maxLength ?? 1024, 'maxLength', 2);
  return {
    reference, data, cachePath, maxLength,
    maxPromptLength: checkInt(opts.maxPromptLength ?? 512, 'maxPromptLength', 1, maxLength - 1),
    truncationMode: checkOneOf(opts.truncationMode ?? 'keep_end', 'truncationMode', ['keep_end', 'keep_start'] as const),
    overlongPolicy: checkOneOf(opts.overlongPolicy ?? 'truncate', 'overlongPolicy', ['truncate', 'drop', 'error'] as const),
    chunkRows: checkInt(opts.chunkRows ?? 1024, 'chunkRows', 1),
    paddingFree: checkBool(opts.paddingFree ?? false, 'paddingFree'),
  };
}

export async function precomputeReference(opts: PrecomputeOptions): Promise<PrecomputeProgress> {
  const { reference, data, cachePath, maxLength, maxPromptLength, truncationMode, overlongPolicy, chunkRows, paddingFree } = resolveCommon(opts);
  const batchSize = checkInt(opts.batchSize ?? 16, 'batchSize', 1, 1 << 20);
  const referenceId = await referenceIdentity(reference);
  await using model = await Model.load(reference, { device: opts.device, dtype: opts.dtype });
  await using cache = await RefLogpCache.open(cachePath, { referenceId, create: true });
  const tok = model.requireTokenizer();
  const src = { data, maxLength, maxPromptLength, truncationMode, overlongPolicy, perDeviceTrainBatchSize: batchSize, shuffle: false, shuffleBufferSize: 1, seed: 0 };
  const p: PrecomputeProgress = { examples: 0, computed: 0, cached: 0, tokensPerSecond: 0 };
  let tokens = 0;
  const t0 = Date.now();
  // Only examples with a missing key go to the model: batch those.
  async function* missing() {
    for await (const ex of preferenceExamples(src, tok, newStats())) {
      p.examples++;
      const keys = [sequenceKey(ex.prompt_ids, ex.chosen_ids), sequenceKey(ex.prompt_ids, ex.rejected_ids)];
      const have = keys.filter((k) => cache.has(k)).length;
      p.cached += have;
      if (have < 2) yield ex;
    }
  }
  const pad = tok.padTokenId ?? tok.eosTokenId ?? 0;
  for await (const b of batchPairs(missing(), { batchSize, padTokenId: pad })) {
    const r = await model.sequenceLogps(b.inputIds, b.attentionMask, b.labels, 2 * b.size, b.T, chunkRows, paddingFree);
    const entries: Array<[string, { logp: number; count: number }]> = [];
    b.examples.forEach((ex, i) => {
      entries.push([sequenceKey(ex.prompt_ids, ex.chosen_ids), { logp: r.logps[i], count: r.counts[i] }]);
      entries.push([sequenceKey(ex.prompt_ids, ex.rejected_ids), { logp: r.logps[b.size + i], count: r.counts[b.size + i] }]);
    });
    await cache.putMany(entries);
    p.computed += 2 * b.size;
    for (let i = 0; i < b.lengths.length; i++) tokens += b.lengths[i];
    p.tokensPerSecond = tokens / Math.max(1e-3, (Date.now() - t0) / 1000);
    opts.onProgress?.({ ...p });
  }
  await cache.flush();
  return p;
}

export interface KTOPrecomputeOptions extends PrecomputeOptions {
  /** The KTO run's per-device batch size: the mismatched pairs of the KL estimate are formed within each batch, so
   *  the cache must see the run's very batches. Required (batchSize is ignored). */
  perDeviceTrainBatchSize: number;
  /** The run's shuffling (seed, shuffle, shuffleBufferSize) and epochs, as in DPOTrainer; defaults 42, true, 10000, 1. */
  seed?: number;
  shuffle?: boolean;
  shuffleBufferSize?: number;
  epochs?: number;
  /** Ranks of the data-parallel run (each forms its batches from its shard); default 1. */
  worldSize?: number;
}

/**
 * Reference log-probs for a KTO run: replays the run's batches (every epoch, every rank) and stores the examples'
 * and the mismatched pairs' log-probs, so that KTOTrainer with the same settings needs no reference model.
 */
export async function precomputeKTOReference(opts: KTOPrecomputeOptions): Promise<PrecomputeProgress> {
  const { reference, data, cachePath, maxLength, maxPromptLength, truncationMode, overlongPolicy, chunkRows, paddingFree } = resolveCommon(opts);
  const perDeviceTrainBatchSize = checkInt(opts.perDeviceTrainBatchSize, 'perDeviceTrainBatchSize', 1, 1 << 20);
  const seed = checkInt(opts.seed ?? 42, 'seed', 0, 2 ** 32 - 1);
  const shuffle = checkBool(opts.shuffle ?? true, 'shuffle');
  const shuffleBufferSize = checkInt(opts.shuffleBufferSize ?? 10000, 'shuffleBufferSize', 1);
  const epochs = checkInt(opts.epochs ?? 1, 'epochs', 1, 1 << 20);
  const worldSize = checkInt(opts.worldSize ?? 1, 'worldSize', 1, 1 << 16);
  const referenceId = await referenceIdentity(reference);
  await using model = await Model.load(reference, { device: opts.device, dtype: opts.dtype });
  await using cache = await RefLogpCache.open(cachePath, { referenceId, create: true });
  const tok = model.requireTokenizer();
  const src = { data, maxLength, maxPromptLength, truncationMode, overlongPolicy, perDeviceTrainBatchSize, shuffle, shuffleBufferSize, seed };
  const p: PrecomputeProgress = { examples: 0, computed: 0, cached: 0, tokensPerSecond: 0 };
  let tokens = 0;
  const t0 = Date.now();
  for (let epoch = 0; epoch < epochs; epoch++) {
    for (let rank = 0; rank < worldSize; rank++) {
      for await (const b of ktoBatches(src, tok, epoch, 0, newStats(), { rank, worldSize })) {
        p.examples += b.size;
        if (b.keys.every((k) => cache.has(k))) {
          p.cached += b.keys.length;
          continue;
        }
        const r = await model.sequenceLogps(b.inputIds, b.attentionMask, b.labels, 2 * b.size, b.T, chunkRows, paddingFree);
        await cache.putMany(b.keys.map((k, i) => [k, { logp: r.logps[i], count: r.counts[i] }]));
        p.computed += b.keys.length;
        for (let i = 0; i < b.attentionMask.length; i++) tokens += b.attentionMask[i];
        p.tokensPerSecond = tokens / Math.max(1e-3, (Date.now() - t0) / 1000);
        opts.onProgress?.({ ...p });
      }
    }
  }
  await cache.flush();
  return p;
}
