// Tokenizer loaded from a Hugging Face model directory (tokenizer.json + tokenizer_config.json, optional
// chat_template.jinja, generation_config.json, config.json), encoding with @huggingface/tokenizers (pure JS).
//
// Special-token conventions:
// - encode(text, {addSpecialTokens: true}) applies tokenizer.json's post-processor (e.g. Llama-3 prepends
//   <|begin_of_text|>). As in transformers 5, tokenizer_config.json's add_bos_token / add_eos_token are ignored when
//   tokenizer.json exists (transformers 4's Llama tokenizers honoured them): the post-processor decides.
// - tokenizer_class LlamaTokenizer(Fast) / CodeLlamaTokenizer(Fast) with a SentencePiece-style BPE: as transformers 5,
//   tokenizer.json's normalizer / pre-tokenizer / decoder are replaced by the class's own pipeline (Metaspace "▁",
//   prepended to the first section unless `legacy: true` (every section) or `add_prefix_space: false` (never)); the
//   vocabulary, merges, added tokens and post-processor stay. This changes only texts that start with a space or
//   follow a special token. test/ts/transformers.test.ts checks the ids against transformers 5.
// - Special tokens come from tokenizer_config.json, else special_tokens_map.json.
// - eosTokenId: tokenizer_config.json eos_token, else the first eos_token_id of generation_config.json, else of
//   config.json. eosTokenIds lists every id those files name (e.g. Llama-3's <|end_of_text|> and <|eot_id|>).
// - padTokenId: pad_token, falling back to eosTokenId (null when neither exists; requireEosTokenId() throws).

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { ChatMessage, ChatTemplate, ChatTemplateError, ChatTemplateOptions } from './chat_template';
import { ValidationError, checkObject, checkString, checkTokenIds } from './validate';

export { ChatMessage, ChatTemplateOptions } from './chat_template';

export interface EncodeOptions {
  /** Add the tokenizer's default special tokens (BOS etc.). Default true. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop special tokens (BOS/EOS/chat markers) from the text. Default false. */
  skipSpecialTokens?: boolean;
}

export interface ApplyChatTemplateOptions extends ChatTemplateOptions {
  /** Name of the template when tokenizer_config.json holds several ({name, template} list). */
  templateName?: string;
}

/** Converts V8's "at position N" in a JSON.parse message into line:column of `text`. */
export function jsonErrorLocation(text: string, err: unknown): string {
  const msg = (err as Error).message ?? String(err);
  const m = /at position (\d+)/.exec(msg);
  if (!m) return msg;
  const pos = Number(m[1]);
  let line = 1;
  let col = 1;
  for (let i = 0; i < pos && i < text.length; i++) {
    if (text.charCodeAt(i) === 10) {
      line++;
      col = 1;
    } else col++;
  }
  return `${msg} (line ${line}, column ${col})`;
}

async function readJsonFile(path: string, required: boolean): Promise<Record<string, unknown> | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (!required && code === 'ENOENT') return undefined;
    throw new ValidationError(`${path}: cannot read file (${code ?? (e as Error).message})`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new ValidationError(`${path}: invalid JSON: ${jsonErrorLocation(text, e)}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ValidationError(`${path}: Expected a JSON object at the top level but received ${Array.isArray(value) ? 'an array' : typeof value}`);
  }
  return value as Record<string, unknown>;
}

async function readTextFile(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new ValidationError(`${path}: cannot read file (${(e as Error).message})`);
  }
}

/** A special token in tokenizer_config.json is a string, an AddedToken object {content}, or null. */
function specialTokenText(v: unknown, field: string, file: string): string | null {
  if (v === undefined || v === null) return null;
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && typeof (v as Record<string, unknown>).content === 'string') return (v as { content: string }).content;
  throw new ValidationError(`${file}: Expected a string or {content: string} for ${field} but received ${JSON.stringify(v)}`);
}

function idList(v: unknown): number[] {
  if (typeof v === 'number' && Number.isInteger(v)) return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === 'number' && Number.isInteger(x));
  return [];
}

const SENTENCEPIECE_CLASSES = new Set(['LlamaTokenizer', 'LlamaTokenizerFast', 'CodeLlamaTokenizer', 'CodeLlamaTokenizerFast']);

/**
 * transformers 5 builds a Llama-class tokenizer's pipeline itself from tokenizer.json's vocabulary and merges
 * (models/llama/tokenization_llama.py): no normalizer, a Metaspace pre-tokenizer that does not split, and the
 * matching decoder. Applied in place to the parsed tokenizer.json when tokenizer_config.json names such a class and
 * the model is a byte-fallback BPE (SentencePiece converted); other tokenizers are used as tokenizer.json says.
 */
function useClassPipeline(tokJson: Record<string, any>, config: Record<string, unknown>): void {
  if (!SENTENCEPIECE_CLASSES.has(String(config.tokenizer_class)) || tokJson.model?.type !== 'BPE' || tokJson.model?.byte_fallback !== true) return;
  const addPrefixSpace = config.add_prefix_space !== false;
  const prependScheme = !addPrefixSpace ? 'never' : config.legacy === true ? 'always' : 'first';
  tokJson.normalizer = null;
  tokJson.pre_tokenizer = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: prependScheme, split: false };
  const decoders: Record<string, unknown>[] = [
    { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' },
    { type: 'ByteFallback' },
    { type: 'Fuse' },
  ];
  if (addPrefixSpace) decoders.push({ type: 'Strip', content: ' ', start: 1, stop: 0 });
  tokJson.decoder = { type: 'Sequence', decoders };
}

export class Tokenizer {
  readonly vocabSize: number;
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly padToken: string | null;
  readonly unkToken: string | null;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: number[];
  private readonly eosId: number | null;
  private readonly padId: number | null;
  private readonly cleanUpSpaces: boolean;
  private readonly templates = new Map<string, ChatTemplate>();

  private constructor(
    readonly dir: string,
    private readonly hf: HfTokenizer,
    config: Record<string, unknown>,
    configPath: string,
    templates: { name: string; source: string; origin: string }[],
    extraEos: number[],
    extraBos: number | null,
  ) {
    let max = -1;
    for (const id of hf.get_vocab(true).values()) if (id > max) max = id;
    this.vocabSize = max + 1;
    this.bosToken = specialTokenText(config.bos_token, 'bos_token', configPath);
    this.eosToken = specialTokenText(config.eos_token, 'eos_token', configPath);
    this.padToken = specialTokenText(config.pad_token, 'pad_token', configPath);
    this.unkToken = specialTokenText(config.unk_token, 'unk_token', configPath);
    const idOf = (tok: string | null, field: string): number | null => {
      if (tok === null) return null;
      const id = hf.token_to_id(tok);
      if (id === undefined) throw new ValidationError(`${configPath}: ${field} ${JSON.stringify(tok)} is not in the vocabulary of ${join(dir, 'tokenizer.json')}`);
      return id;
    };
    this.bosTokenId = idOf(this.bosToken, 'bos_token') ?? extraBos;
    const eos = idOf(this.eosToken, 'eos_token');
    this.eosTokenIds = [...new Set([...(eos !== null ? [eos] : []), ...extraEos])];
    this.eosId = eos ?? (extraEos.length > 0 ? extraEos[0] : null);
    this.padId = idOf(this.padToken, 'pad_token');
    this.cleanUpSpaces = config.clean_up_tokenization_spaces === true;
    const special = { bos_token: this.bosToken, eos_token: this.eosToken, pad_token: this.padToken, unk_token: this.unkToken };
    for (const t of templates) this.templates.set(t.name, new ChatTemplate(t.source, t.origin, special));
  }

  /** Loads tokenizer.json (required), tokenizer_config.json, chat_template.jinja, generation_config.json, config.json. */
  static async fromDir(dir: string): Promise<Tokenizer> {
    checkString(dir, 'dir', { nonEmpty: true });
    const tokPath = join(dir, 'tokenizer.json');
    const cfgPath = join(dir, 'tokenizer_config.json');
    const tokJson = (await readJsonFile(tokPath, true))!;
    const config = (await readJsonFile(cfgPath, false)) ?? {};
    // Older checkpoints keep the special tokens in special_tokens_map.json; tokenizer_config.json wins.
    const mapPath = join(dir, 'special_tokens_map.json');
    const specialMap = (await readJsonFile(mapPath, false)) ?? {};
    for (const k of ['bos_token', 'eos_token', 'pad_token', 'unk_token']) {
      if (config[k] === undefined && specialMap[k] !== undefined) config[k] = specialMap[k];
    }
    const genCfg = (await readJsonFile(join(dir, 'generation_config.json'), false)) ?? {};
    const modelCfg = (await readJsonFile(join(dir, 'config.json'), false)) ?? {};
    if (typeof tokJson.model !== 'object' || tokJson.model === null) {
      throw new ValidationError(`${tokPath}: Expected an object for model but received ${JSON.stringify(tokJson.model)}`);
    }
    if (!Array.isArray(tokJson.added_tokens)) tokJson.added_tokens = [];
    // Templates: chat_template.jinja wins over tokenizer_config.json's chat_template (as in transformers).
    const templates: { name: string; source: string; origin: string }[] = [];
    const jinjaPath = join(dir, 'chat_template.jinja');
    const jinja = await readTextFile(jinjaPath);
    if (jinja !== undefined) templates.push({ name: 'default', source: jinja, origin: jinjaPath });
    const ct = config.chat_template;
    if (typeof ct === 'string') {
      if (jinja === undefined) templates.push({ name: 'default', source: ct, origin: `${cfgPath} (chat_template)` });
    } else if (Array.isArray(ct)) {
      ct.forEach((e, i) => {
        const o = checkObject(e, `${cfgPath}: chat_template[${i}]`);
        const name = checkString(o.name, `${cfgPath}: chat_template[${i}].name`, { nonEmpty: true });
        const source = checkString(o.template, `${cfgPath}: chat_template[${i}].template`);
        if (!(name === 'default' && jinja !== undefined)) templates.push({ name, source, origin: `${cfgPath} (chat_template '${name}')` });
      });
    } else if (ct !== undefined && ct !== null) {
      throw new ValidationError(`${cfgPath}: Expected a string or a list of {name, template} for chat_template but received ${typeof ct}`);
    }
    useClassPipeline(tokJson, config);
    let hf: HfTokenizer;
    try {
      hf = new HfTokenizer(tokJson, config);
    } catch (e) {
      throw new ValidationError(`${tokPath}: unsupported or invalid tokenizer: ${(e as Error).message}`);
    }
    const extraEos = [...idList(genCfg.eos_token_id), ...idList(modelCfg.eos_token_id)];
    const extraBos = idList(genCfg.bos_token_id)[0] ?? idList(modelCfg.bos_token_id)[0] ?? null;
    return new Tokenizer(dir, hf, config, cfgPath, templates, extraEos, extraBos);
  }

  /** EOS id (null when no file defines one). */
  get eosTokenId(): number | null {
    return this.eosId;
  }

  /** EOS id; throws naming the files looked at when no EOS is defined (completions need one). */
  requireEosTokenId(): number {
    if (this.eosId === null) {
      throw new ValidationError(`No EOS token for ${this.dir}: expected eos_token in tokenizer_config.json or eos_token_id in generation_config.json / config.json`);
    }
    return this.eosId;
  }

  /** Pad id: pad_token, else EOS, else null. */
  get padTokenId(): number | null {
    return this.padId ?? this.eosId;
  }

  /** True when a chat template is available (under `name`, default 'default'). */
  hasChatTemplate(name = 'default'): boolean {
    return this.templates.has(name);
  }

  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    checkString(text, 'text');
    const add = opts.addSpecialTokens ?? true;
    if (text.length === 0 && !add) return [];
    return this.hf.encode(text, { add_special_tokens: add }).ids;
  }

  decode(ids: readonly number[] | Int32Array, opts: DecodeOptions = {}): string {
    const arr = checkTokenIds(Array.from(ids as ArrayLike<number>), 'ids', this.vocabSize);
    if (arr.length === 0) return '';
    return this.hf.decode(arr, { skip_special_tokens: opts.skipSpecialTokens ?? false, clean_up_tokenization_spaces: this.cleanUpSpaces });
  }

  /** Renders messages with the model's chat template. Throws naming tokenizer_config.json when there is none. */
  applyChatTemplate(messages: ChatMessage[], opts: ApplyChatTemplateOptions = {}): string {
    let name = opts.templateName ?? 'default';
    if (opts.templateName === undefined && opts.tools !== undefined && this.templates.has('tool_use')) name = 'tool_use';
    const t = this.templates.get(name);
    if (!t) {
      throw new ChatTemplateError(
        name === 'default'
          ? `No chat template for ${this.dir}: expected ${join(this.dir, 'chat_template.jinja')} or a chat_template field in ${join(this.dir, 'tokenizer_config.json')}`
          : `No chat template named '${name}' in ${join(this.dir, 'tokenizer_config.json')}; available: ${[...this.templates.keys()].join(', ') || 'none'}`,
      );
    }
    return t.render(messages, opts);
  }
}
