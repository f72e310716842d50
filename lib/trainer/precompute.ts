// Reference log-prob precompute: one no-grad pass of the reference model over a data file, stored in the
// content-keyed cache so that training never needs the reference model. Only examples not yet cached are computed.
import { Model } from '../model';
import { RefLogpCache, referenceIdentity, sequenceKey } from '../ref_cache';
import { batchPairs, newStats } from '../data';
import { checkInt, checkObject, checkOneOf, checkString } from '../validate';
import { preferenceExamples } from './data_source';
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
  /** Called after each batch. */
  onProgress?: (p: PrecomputeProgress) => void;
}

export interface PrecomputeProgress {
  examples: number; // examples seen
  computed: number; // sequences computed now
  cached: number; // sequences already in the cache
  tokensPerSecond: number;
}

export async function precomputeReference(opts: PrecomputeOptions): Promise<PrecomputeProgress> {
  checkObject(opts, 'precompute options');
  const reference = checkString(opts.reference, 'reference', { nonEmpty: true });
  const data = checkString(opts.data, 'data', { nonEmpty: true });
  const cachePath = checkString(opts.cache, 'cache', { nonEmpty: true });
  const batchSize = checkInt(opts.batchSize ?? 16, 'batchSize', 1, 1 << 20);
  const maxLength = checkInt(opts.maxLength ?? 1024, 'maxLength', 2);
  const maxPromptLength = checkInt(opts.maxPromptLength ?? 512, 'maxPromptLength', 1, maxLength - 1);
  const truncationMode = checkOneOf(opts.truncationMode ?? 'keep_end', 'truncationMode', ['keep_end', 'keep_start'] as const);
  const overlongPolicy = checkOneOf(opts.overlongPolicy ?? 'truncate', 'overlongPolicy', ['truncate', 'drop', 'error'] as const);
  const chunkRows = checkInt(opts.chunkRows ?? 1024, 'chunkRows', 1);
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
    const r = await model.sequenceLogps(b.inputIds, b.attentionMask, b.labels, 2 * b.size, b.T, chunkRows);
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
