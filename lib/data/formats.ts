// Preference records (one JSON object each) -> token ids.
//
// Accepted record formats:
//   standard        {"prompt": str, "chosen": str, "rejected": str}
//   conversational  {"prompt": [msg], "chosen": [msg], "rejected": [msg]}          msg = {"role", "content"}
//   implicit        {"chosen": [msg], "rejected": [msg]}   full conversations; prompt = longest common message
//                   prefix, each completion = the messages after it
//   tokenized       {"prompt_ids": [int], "chosen_ids": [int], "rejected_ids": [int]}
//   (any of the pair formats may carry a numeric "margin", used by reward-model training)
//   unpaired (KTO)  {"prompt": str|[msg], "completion": str|[msg], "label": bool}, or prompt_ids/completion_ids
//
// Tokenization conventions (the same as TRL's preference trainers):
// - standard prompt     = tokenizer.encode(prompt) with the tokenizer's default special tokens (e.g. BOS).
// - standard completion = tokenizer.encode(completion, {addSpecialTokens: false}).
// - conversational prompt = applyChatTemplate(prompt, {addGenerationPrompt: true}), encoded WITHOUT special tokens
//   (the template writes BOS etc. itself).
// - conversational completion = applyChatTemplate(prompt + completion) with the rendered prompt text removed from
//   its front (an error if the rendered conversation does not start with the rendered prompt), encoded without
//   special tokens.
// - every completion ends with the EOS id: appended unless it is already the last id (`appendEos: false` turns
//   this off). This also applies to pre-tokenized records.
// - chosen identical to rejected (same text, same messages or same ids) is an error, or skipped with
//   `onIdentical: 'skip'`.
// Every error names the source, the line (or row) and the field, e.g.
//   "data.jsonl:17: Expected a non-empty string for chosen but received 42".

import type { Tokenizer } from '../tokenizer';
import type { ChatMessage } from '../chat_template';
import { checkMessages } from '../chat_template';
import { ValidationError, checkBool, checkNumber, checkObject, checkString, checkTokenIds, fail } from '../validate';

export type RecordFormat = 'standard' | 'conversational' | 'implicit' | 'tokenized' | 'unpaired';
export const RECORD_FORMATS: readonly RecordFormat[] = ['standard', 'conversational', 'implicit', 'tokenized', 'unpaired'];

export interface PreferenceExample {
  prompt_ids: number[];
  chosen_ids: number[];
  rejected_ids: number[];
  /** The record's optional "margin" (reward-model training: −log σ(r_w − r_l − margin)). */
  margin?: number;
}

export interface UnpairedExample {
  prompt_ids: number[];
  completion_ids: number[];
  label: boolean;
}

export type TokenizedExample = PreferenceExample | UnpairedExample;

export const DEFAULT_ROLES: readonly string[] = ['system', 'developer', 'user', 'assistant', 'tool'];

export interface FormatOptions {
  /** Force one format; by default each record's format is detected from its keys. */
  format?: RecordFormat;
  /** chosen == rejected: 'error' (default) or 'skip'. */
  onIdentical?: 'error' | 'skip';
  /** Allowed message roles (default system, developer, user, assistant, tool). */
  roles?: readonly string[];
  /** Append EOS to completions that do not end with it (default true). */
  appendEos?: boolean;
  /** Extra chat-template variables. */
  templateVars?: Record<string, unknown>;
}

/** Where a record came from: `file:line` for JSONL, `file: row N` for Parquet / in-memory sources. */
export interface SourceRecord {
  file: string;
  line: number;
  value: unknown;
  /** 'line' (default) or 'row' */
  unit?: 'line' | 'row';
}

export function locationOf(r: { file: string; line: number; unit?: 'line' | 'row' }): string {
  return r.unit === 'row' ? `${r.file}: row ${r.line}` : `${r.file}:${r.line}`;
}

/** A bad record: the message starts with "<file>:<line>: ". */
export class DataError extends ValidationError {
  constructor(readonly location: string, readonly detail: string) {
    super(`${location}: ${detail}`);
    this.name = 'DataError';
  }
}

/** Detects the format of one record from its keys. */
export function detectFormat(value: Record<string, unknown>): RecordFormat {
  if ('label' in value) return 'unpaired';
  if ('prompt_ids' in value || 'chosen_ids' in value || 'rejected_ids' in value) return 'tokenized';
  if ('prompt' in value) return Array.isArray(value.prompt) ? 'conversational' : 'standard';
  if (Array.isArray(value.chosen) || Array.isArray(value.rejected)) return 'implicit';
  return 'standard';
}

function withEos(ids: number[], eos: number, append: boolean): number[] {
  if (append && (ids.length === 0 || ids[ids.length - 1] !== eos)) ids.push(eos);
  return ids;
}

function sameMessages(a: ChatMessage[], b: ChatMessage[]): boolean {
  return a.length === b.length && a.every((m, i) => m.role === b[i].role && m.content === b[i].content);
}

function sameIds(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Encodes a conversational completion: template(prompt + completion) minus the rendered prompt. */
function encodeConversationCompletion(
  tok: Tokenizer, prompt: ChatMessage[], promptText: string, completion: ChatMessage[], field: string, vars?: Record<string, unknown>,
): number[] {
  const full = tok.applyChatTemplate([...prompt, ...completion], { addGenerationPrompt: false, extra: vars });
  if (!full.startsWith(promptText)) {
    throw new ValidationError(
      `Expected the chat template's rendering of prompt + ${field} to start with the rendered prompt (add_generation_prompt) but received ${JSON.stringify(full.slice(0, 80))} vs prompt ${JSON.stringify(promptText.slice(0, 80))}`,
    );
  }
  return tok.encode(full.slice(promptText.length), { addSpecialTokens: false });
}

function encodePromptMessages(tok: Tokenizer, prompt: ChatMessage[], vars?: Record<string, unknown>): { text: string; ids: number[] } {
  const text = tok.applyChatTemplate(prompt, { addGenerationPrompt: true, extra: vars });
  return { text, ids: tok.encode(text, { addSpecialTokens: false }) };
}

function nonEmptyMessages(v: unknown, field: string, roles: readonly string[]): ChatMessage[] {
  const m = checkMessages(v, field, roles);
  if (m.length === 0) fail('a non-empty array of messages', field, v);
  return m;
}

/**
 * Tokenizes one record. Returns null when the record is skipped (chosen == rejected with onIdentical 'skip').
 * Throws DataError naming `location` and the field.
 */
export function tokenizeRecord(value: unknown, tok: Tokenizer, location: string, opts: FormatOptions = {}): TokenizedExample | null {
  try {
    return tokenizeRecordUnchecked(value, tok, opts);
  } catch (e) {
    if (e instanceof DataError) throw e;
    if (e instanceof Error) throw new DataError(location, e.message);
    throw e;
  }
}

function tokenizeRecordUnchecked(value: unknown, tok: Tokenizer, opts: FormatOptions): TokenizedExample | null {
  const rec = checkObject(value, 'the record');
  const ex = tokenizeByFormat(rec, tok, opts);
  if (ex !== null && isPreference(ex) && rec.margin !== undefined && rec.margin !== null) ex.margin = checkNumber(rec.margin, 'margin');
  return ex;
}

function tokenizeByFormat(rec: Record<string, unknown>, tok: Tokenizer, opts: FormatOptions): TokenizedExample | null {
  const format = opts.format ?? detectFormat(rec);
  const roles = opts.roles ?? DEFAULT_ROLES;
  const appendEos = opts.appendEos ?? true;
  const onIdentical = opts.onIdentical ?? 'error';
  const vars = opts.templateVars;
  const identical = (): null => {
    if (onIdentical === 'skip') return null;
    throw new ValidationError('Expected chosen and rejected to differ but received identical chosen and rejected');
  };

  switch (format) {
    case 'standard': {
      const prompt = checkString(rec.prompt, 'prompt', { nonEmpty: true });
      const chosen = checkString(rec.chosen, 'chosen', { nonEmpty: true });
      const rejected = checkString(rec.rejected, 'rejected', { nonEmpty: true });
      if (chosen === rejected) return identical();
      const eos = tok.requireEosTokenId();
      return {
        prompt_ids: tok.encode(prompt),
        chosen_ids: withEos(tok.encode(chosen, { addSpecialTokens: false }), eos, appendEos),
        rejected_ids: withEos(tok.encode(rejected, { addSpecialTokens: false }), eos, appendEos),
      };
    }
    case 'conversational':
    case 'implicit': {
      let prompt: ChatMessage[];
      let chosen: ChatMessage[];
      let rejected: ChatMessage[];
      if (format === 'conversational') {
        prompt = nonEmptyMessages(rec.prompt, 'prompt', roles);
        chosen = nonEmptyMessages(rec.chosen, 'chosen', roles);
        rejected = nonEmptyMessages(rec.rejected, 'rejected', roles);
        if (sameMessages(chosen, rejected)) return identical();
      } else {
        const c = nonEmptyMessages(rec.chosen, 'chosen', roles);
        const r = nonEmptyMessages(rec.rejected, 'rejected', roles);
        let k = 0;
        while (k < c.length && k < r.length && c[k].role === r[k].role && c[k].content === r[k].content) k++;
        if (k === c.length && k === r.length) return identical();
        if (k === 0) fail('chosen and rejected conversations sharing at least one leading prompt message', 'chosen[0]', c[0].content);
        if (k === c.length) fail('messages after the shared prompt', 'chosen', c);
        if (k === r.length) fail('messages after the shared prompt', 'rejected', r);
        prompt = c.slice(0, k);
        chosen = c.slice(k);
        rejected = r.slice(k);
      }
      const eos = tok.requireEosTokenId();
      const p = encodePromptMessages(tok, prompt, vars);
      return {
        prompt_ids: p.ids,
        chosen_ids: withEos(encodeConversationCompletion(tok, prompt, p.text, chosen, 'chosen', vars), eos, appendEos),
        rejected_ids: withEos(encodeConversationCompletion(tok, prompt, p.text, rejected, 'rejected', vars), eos, appendEos),
      };
    }
    case 'tokenized': {
      const V = tok.vocabSize;
      const prompt = checkTokenIds(rec.prompt_ids, 'prompt_ids', V);
      const chosen = checkTokenIds(rec.chosen_ids, 'chosen_ids', V);
      const rejected = checkTokenIds(rec.rejected_ids, 'rejected_ids', V);
      if (prompt.length === 0) fail('a non-empty array of token ids', 'prompt_ids', prompt);
      if (chosen.length === 0) fail('a non-empty array of token ids', 'chosen_ids', chosen);
      if (rejected.length === 0) fail('a non-empty array of token ids', 'rejected_ids', rejected);
      if (sameIds(chosen, rejected)) return identical();
      const eos = tok.requireEosTokenId();
      return { prompt_ids: [...prompt], chosen_ids: withEos([...chosen], eos, appendEos), rejected_ids: withEos([...rejected], eos, appendEos) };
    }
    case 'unpaired': {
      const label = checkBool(rec.label, 'label');
      const eos = tok.requireEosTokenId();
      if ('prompt_ids' in rec || 'completion_ids' in rec) {
        const V = tok.vocabSize;
        const prompt = checkTokenIds(rec.prompt_ids, 'prompt_ids', V);
        const completion = checkTokenIds(rec.completion_ids, 'completion_ids', V);
        if (prompt.length === 0) fail('a non-empty array of token ids', 'prompt_ids', prompt);
        if (completion.length === 0) fail('a non-empty array of token ids', 'completion_ids', completion);
        return { prompt_ids: [...prompt], completion_ids: withEos([...completion], eos, appendEos), label };
      }
      if (Array.isArray(rec.prompt)) {
        const prompt = nonEmptyMessages(rec.prompt, 'prompt', roles);
        const completion = nonEmptyMessages(rec.completion, 'completion', roles);
        const p = encodePromptMessages(tok, prompt, vars);
        return { prompt_ids: p.ids, completion_ids: withEos(encodeConversationCompletion(tok, prompt, p.text, completion, 'completion', vars), eos, appendEos), label };
      }
      const prompt = checkString(rec.prompt, 'prompt', { nonEmpty: true });
      const completion = checkString(rec.completion, 'completion', { nonEmpty: true });
      return { prompt_ids: tok.encode(prompt), completion_ids: withEos(tok.encode(completion, { addSpecialTokens: false }), eos, appendEos), label };
    }
    default:
      return fail(`one of ${RECORD_FORMATS.map((f) => `'${f}'`).join(', ')}`, 'format', format);
  }
}

export function isPreference(e: TokenizedExample): e is PreferenceExample {
  return 'chosen_ids' in e;
}
