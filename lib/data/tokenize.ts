// Records -> tokenized examples with truncation (pull-based async iteration).
//
// Truncation (the classic TRL DPO rules), applied per example when lengths are set:
// 1. maxPromptLength: a longer prompt is cut to maxPromptLength tokens: truncationMode 'keep_end' (default) keeps
//    the LAST maxPromptLength tokens, 'keep_start' keeps the FIRST ones.
// 2. maxLength (prompt + completion): if prompt + longest completion is longer, the prompt is first cut (same mode)
//    to at most maxLength - 1 tokens, then every completion is cut to its first maxLength - promptLength tokens
//    (a cut completion loses its EOS).
// overlongPolicy decides what happens to an example that needs any of these cuts:
//   'truncate' (default) cuts it, 'drop' skips it (stats.dropped counts them), 'error' throws naming file:line.

import type { Tokenizer } from '../tokenizer';
import { ValidationError, checkInt, checkKnownKeys, checkOneOf } from '../validate';
import { AnyIterable } from './shuffle';
import { DataError, FormatOptions, RECORD_FORMATS, SourceRecord, TokenizedExample, locationOf, tokenizeRecord } from './formats';

export type TruncationMode = 'keep_start' | 'keep_end';
export type OverlongPolicy = 'truncate' | 'drop' | 'error';

export interface TokenizeOptions extends FormatOptions {
  maxLength?: number;
  maxPromptLength?: number;
  truncationMode?: TruncationMode;
  overlongPolicy?: OverlongPolicy;
  /** Filled while iterating. */
  stats?: TokenizeStats;
}

export interface TokenizeStats {
  /** examples yielded */
  examples: number;
  /** examples cut by truncation */
  truncated: number;
  /** overlong examples dropped (overlongPolicy 'drop') */
  dropped: number;
  /** records skipped because chosen == rejected (onIdentical 'skip') */
  skippedIdentical: number;
}

export function newStats(): TokenizeStats {
  return { examples: 0, truncated: 0, dropped: 0, skippedIdentical: 0 };
}

const OPTION_KEYS = ['format', 'onIdentical', 'roles', 'appendEos', 'templateVars', 'maxLength', 'maxPromptLength', 'truncationMode', 'overlongPolicy', 'stats'] as const;

export interface LengthLimits {
  maxLength?: number;
  maxPromptLength?: number;
  truncationMode: TruncationMode;
}

function cutPrompt(ids: number[], n: number, mode: TruncationMode): number[] {
  if (ids.length <= n) return ids;
  return mode === 'keep_end' ? ids.slice(ids.length - n) : ids.slice(0, n);
}

/**
 * Applies the truncation rules to one example. Returns the (possibly new) example and whether anything was cut;
 * `reason` describes the first limit that was exceeded (for errors).
 */
export function truncateExample<E extends TokenizedExample>(ex: E, lim: LengthLimits): { example: E; cut: boolean; reason?: string } {
  const completions = 'chosen_ids' in ex ? (['chosen_ids', 'rejected_ids'] as const) : (['completion_ids'] as const);
  const rec = ex as unknown as Record<string, number[]>;
  let prompt = ex.prompt_ids;
  let reason: string | undefined;
  if (lim.maxPromptLength !== undefined && prompt.length > lim.maxPromptLength) {
    reason = `Expected at most maxPromptLength=${lim.maxPromptLength} prompt tokens but received ${prompt.length}`;
    prompt = cutPrompt(prompt, lim.maxPromptLength, lim.truncationMode);
  }
  const longest = Math.max(...completions.map((k) => rec[k].length));
  const out: Record<string, unknown> = { ...ex, prompt_ids: prompt };
  if (lim.maxLength !== undefined && prompt.length + longest > lim.maxLength) {
    reason ??= `Expected at most maxLength=${lim.maxLength} prompt+completion tokens but received ${ex.prompt_ids.length}+${longest}`;
    prompt = cutPrompt(prompt, lim.maxLength - 1, lim.truncationMode);
    out.prompt_ids = prompt;
    const room = lim.maxLength - prompt.length;
    for (const k of completions) out[k] = rec[k].length > room ? rec[k].slice(0, room) : rec[k];
  }
  return { example: out as unknown as E, cut: reason !== undefined, reason };
}

function checkLimits(opts: TokenizeOptions): LengthLimits & { policy: OverlongPolicy } {
  const maxLength = opts.maxLength === undefined ? undefined : checkInt(opts.maxLength, 'maxLength', 2);
  const maxPromptLength = opts.maxPromptLength === undefined ? undefined : checkInt(opts.maxPromptLength, 'maxPromptLength', 1);
  if (maxLength !== undefined && maxPromptLength !== undefined && maxPromptLength >= maxLength) {
    throw new ValidationError(`Expected maxPromptLength < maxLength (${maxLength}) for maxPromptLength but received ${maxPromptLength}`);
  }
  return {
    maxLength,
    maxPromptLength,
    truncationMode: opts.truncationMode === undefined ? 'keep_end' : checkOneOf(opts.truncationMode, 'truncationMode', ['keep_start', 'keep_end'] as const),
    policy: opts.overlongPolicy === undefined ? 'truncate' : checkOneOf(opts.overlongPolicy, 'overlongPolicy', ['truncate', 'drop', 'error'] as const),
  };
}

/**
 * Tokenizes a stream of records ({file, line, value}, as yielded by readJsonl / readParquetRecords) into
 * examples, applying the format conventions (see formats.ts) and the truncation rules above.
 */
export async function* tokenizeExamples(
  source: AnyIterable<SourceRecord>, tokenizer: Tokenizer, opts: TokenizeOptions = {},
): AsyncGenerator<TokenizedExample> {
  checkKnownKeys(opts as Record<string, unknown>, OPTION_KEYS, 'tokenizeExamples');
  if (opts.format !== undefined) checkOneOf(opts.format, 'format', RECORD_FORMATS);
  if (opts.onIdentical !== undefined) checkOneOf(opts.onIdentical, 'onIdentical', ['error', 'skip'] as const);
  const lim = checkLimits(opts);
  const stats = opts.stats ?? newStats();
  for await (const r of source) {
    const where = locationOf(r);
    const ex = tokenizeRecord(r.value, tokenizer, where, opts);
    if (ex === null) {
      stats.skippedIdentical++;
      continue;
    }
    const t = truncateExample(ex, lim);
    if (t.cut) {
      if (lim.policy === 'error') throw new DataError(where, t.reason!);
      if (lim.policy === 'drop') {
        stats.dropped++;
        continue;
      }
      stats.truncated++;
    }
    stats.examples++;
    yield t.example;
  }
}
