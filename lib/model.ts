// A causal LM loaded from a Hugging Face directory (or made with random weights), with its tokenizer.
// Owns native memory: dispose() (idempotent) or `await using`.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { callNative, callNativeSync, NativeModelHandle } from './native';
import { addon } from './runtime';
import { Tokenizer } from './tokenizer';
import { AdapterInfo, LoraOptions, resolveLoraOptions } from './lora';
import { tokenizeRecord, UnpairedExample } from './data/formats';
import { checkBool, checkDevice, checkDType, checkInt, checkNumber, checkObject, checkOneOf, checkString, checkTokenIds, Device, DType, fail } from './validate';

export interface ModelLoadOptions {
  /** 'cpu' (default), 'cuda' or 'cuda:N'. */
  device?: Device;
  /** Compute dtype: 'float32' (default; the only one on CPU) or 'bfloat16' / 'float16' on CUDA. */
  dtype?: DType;
  /** 'score': load as a reward model (…ForSequenceClassification). A causal checkpoint's lm_head is dropped and a
   *  score head drawn from normal(0, initializer_range or 0.02) with `seed`; a score checkpoint loads as is.
   *  Default: the head config.json describes. */
  head?: 'score';
  /** Seed of a new score head; default 0. */
  seed?: number;
}

/** A text to score: a whole text, or a prompt and its completion (tokenized as the trainers do). */
export type ScoreInput = string | { prompt: string; completion: string };

export interface GenerateOptions {
  /** New tokens at most; default 64. */
  maxNewTokens?: number;
  /** 0 = greedy (default); > 0 samples from softmax(logits / temperature). */
  temperature?: number;
  /** Keep the k most likely tokens when sampling (0 = all); default 0. */
  topK?: number;
  /** Nucleus sampling mass (1 = off); default 1. */
  topP?: number;
  /** Seed of the sampler; default 0. */
  seed?: number;
  /** Stop at these token ids; default the tokenizer's / config's EOS ids. */
  eosTokenIds?: number[];
}

export interface SequenceLogps {
  logps: Float64Array;
  counts: Int32Array;
  logitsSum: Float64Array;
}

function resolveLoad(opts: ModelLoadOptions = {}): { device: Device; dtype: DType } {
  checkObject(opts, 'model options');
  const device = checkDevice(opts.device ?? 'cpu', 'device');
  const dtype = checkDType(opts.dtype ?? 'float32', 'dtype');
  if (device === 'cpu' && dtype !== 'float32') fail("'float32' on device 'cpu'", 'dtype', dtype);
  return { device, dtype };
}

export class Model implements AsyncDisposable {
  private handle: NativeModelHandle | undefined;
  /** config.json as the native side sees it (with a torch_dpo section: parameters, device, dtype, source). */
  readonly config: Record<string, any>;

  private constructor(handle: NativeModelHandle, readonly tokenizer: Tokenizer | undefined, readonly dir: string | undefined) {
    this.handle = handle;
    this.config = JSON.parse(callNativeSync('Model.config', () => handle.config()));
  }

  /** Loads config.json + safetensors weights (+ tokenizer.json when present) from a Hugging Face model directory. */
  static async load(dir: string, opts: ModelLoadOptions = {}): Promise<Model> {
    checkString(dir, 'model directory', { nonEmpty: true });
    const { device, dtype } = resolveLoad(opts);
    const head = opts.head === undefined ? '' : checkOneOf(opts.head, 'head', ['score'] as const);
    const seed = checkInt(opts.seed ?? 0, 'seed', 0, 2 ** 31 - 1);
    if (!fs.existsSync(path.join(dir, 'config.json'))) throw new Error(`${path.join(dir, 'config.json')}: not found (expected a Hugging Face model directory)`);
    const tokenizer = fs.existsSync(path.join(dir, 'tokenizer.json')) ? await Tokenizer.fromDir(dir) : undefined;
    const handle = await callNative(`loading ${dir}`, () =>
      head ? addon().loadModel(path.resolve(dir), device, dtype, head, seed) : addon().loadModel(path.resolve(dir), device, dtype),
    );
    const m = new Model(handle, tokenizer, dir);
    if (tokenizer && tokenizer.vocabSize > m.config.vocab_size) {
      m.dispose();
      throw new Error(`${path.join(dir, 'tokenizer.json')}: vocabulary of ${tokenizer.vocabSize} tokens is larger than the model's embedding (vocab_size ${m.config.vocab_size} in config.json)`);
    }
    return m;
  }

  /** A model with random weights from a config object (config.json fields), e.g. for tests and the demo. */
  static async create(config: Record<string, unknown>, opts: ModelLoadOptions & { seed?: number; tokenizer?: Tokenizer } = {}): Promise<Model> {
    checkObject(config, 'config');
    const { device, dtype } = resolveLoad({ device: opts.device, dtype: opts.dtype });
    const seed = checkInt(opts.seed ?? 0, 'seed', 0, 2 ** 31 - 1);
    const handle = await callNative('creating a model', () => addon().createModel(JSON.stringify(config), device, dtype, seed));
    return new Model(handle, opts.tokenizer, undefined);
  }

  /** The native handle (for trainers in this package); throws once disposed. */
  get native(): NativeModelHandle {
    if (!this.handle) throw new Error('Model was disposed');
    return this.handle;
  }

  get vocabSize(): number {
    return this.config.vocab_size;
  }

  get eosTokenIds(): number[] {
    if (this.tokenizer && this.tokenizer.eosTokenIds.length > 0) return this.tokenizer.eosTokenIds;
    const e = this.config.eos_token_id;
    return Array.isArray(e) ? e : typeof e === 'number' ? [e] : [];
  }

  /** Summed log-probs of scored tokens for a right-padded (rows, T) batch; labels shifted, -100 = not scored. */
  async sequenceLogps(inputIds: Int32Array, attentionMask: Int32Array, labels: Int32Array, rows: number, T: number, chunkRows = 1024, paddingFree = false): Promise<SequenceLogps> {
    checkLogpsArgs(rows, T, chunkRows, paddingFree);
    return callNative('Model.sequenceLogps', () => this.native.sequenceLogps(inputIds, attentionMask, labels, rows, T, chunkRows, paddingFree));
  }

  /** Per-token log p(x_t | x_<t) of each sequence (unpadded lists of ids); entry 0 of each row is omitted. */
  async tokenLogps(sequences: number[][]): Promise<Float32Array[]> {
    const { ids, mask, rows, T } = rightPadded(sequences, this.vocabSize);
    const out = await callNative('Model.tokenLogps', () => this.native.tokenLogps(ids, mask, rows, T));
    return sequences.map((s, r) => out.slice(r * T + 1, r * T + s.length));
  }

  /** True for a reward model (score head, HF …ForSequenceClassification). */
  get isRewardModel(): boolean {
    return Array.isArray(this.config.architectures) && this.config.architectures.some((a: unknown) => typeof a === 'string' && a.endsWith('ForSequenceClassification'));
  }

  /** Rewards of token id sequences (unpadded): the score head at each sequence's last token. Reward models only. */
  async rewards(sequences: number[][]): Promise<Float64Array> {
    const { ids, mask, rows, T } = rightPadded(sequences, this.vocabSize);
    return callNative('Model.rewards', () => this.native.rewards(ids, mask, rows, T));
  }

  /**
   * Rewards of texts: a string is encoded whole (with the tokenizer's special tokens); {prompt, completion} (strings
   * or chat messages) as the data pipeline tokenizes a prompt/completion record (prompt with special tokens or chat
   * template, completion after it, EOS appended). Scored in batches of `batchSize` (default 16). Reward models only.
   */
  async score(inputs: ScoreInput[], opts: { batchSize?: number } = {}): Promise<number[]> {
    if (!Array.isArray(inputs) || inputs.length === 0) fail('a non-empty array of texts or {prompt, completion}', 'inputs', inputs);
    const batchSize = checkInt(opts.batchSize ?? 16, 'batchSize', 1, 1 << 20);
    const tok = this.requireTokenizer();
    const seqs = inputs.map((x, i) => {
      if (typeof x === 'string') return tok.encode(x, { addSpecialTokens: true });
      checkObject(x, `inputs[${i}]`);
      // the data pipeline's tokenization of a prompt/completion record (the label is irrelevant here)
      const ex = tokenizeRecord({ prompt: x.prompt, completion: x.completion, label: true }, tok, `inputs[${i}]`, { format: 'unpaired' }) as UnpairedExample;
      return [...ex.prompt_ids, ...ex.completion_ids];
    });
    const out: number[] = [];
    for (let i = 0; i < seqs.length; i += batchSize) out.push(...(await this.rewards(seqs.slice(i, i + batchSize))));
    return out;
  }

  /** Generates continuations of prompts (token id arrays); returns the new token ids of each (EOS included when hit). */
  async generate(prompts: number[][], opts: GenerateOptions = {}): Promise<number[][]> {
    if (!Array.isArray(prompts) || prompts.length === 0) fail('a non-empty array of token id arrays', 'prompts', prompts);
    prompts.forEach((p, i) => {
      checkTokenIds(p, `prompts[${i}]`, this.vocabSize);
      if (p.length < 1) fail('at least 1 token', `prompts[${i}]`, p);
    });
    checkObject(opts, 'generate options');
    const o = {
      maxNewTokens: checkInt(opts.maxNewTokens ?? 64, 'maxNewTokens', 1, 1 << 20),
      temperature: checkNumber(opts.temperature ?? 0, 'temperature', { min: 0 }),
      topK: checkInt(opts.topK ?? 0, 'topK', 0),
      topP: checkNumber(opts.topP ?? 1, 'topP', { minExclusive: 0, max: 1 }),
      seed: checkInt(opts.seed ?? 0, 'seed', 0, 2 ** 31 - 1),
      eosTokenIds: checkTokenIds(opts.eosTokenIds ?? this.eosTokenIds, 'eosTokenIds', this.vocabSize),
    };
    const rows = prompts.length;
    const T = Math.max(...prompts.map((p) => p.length));
    const ids = new Int32Array(rows * T);
    const mask = new Int32Array(rows * T);
    prompts.forEach((p, r) => p.forEach((t, i) => ((ids[r * T + T - p.length + i] = t), (mask[r * T + T - p.length + i] = 1))));
    const out = await callNative('Model.generate', () => this.native.generate(ids, mask, rows, T, JSON.stringify(o)));
    const n = o.maxNewTokens;
    return prompts.map((_, r) => Array.from(out.subarray(r * n, (r + 1) * n)).filter((t) => t >= 0));
  }

  /** Generates from text (the chat template is applied when `chat`); returns the decoded completion. */
  async generateText(prompt: string, opts: GenerateOptions & { chat?: boolean } = {}): Promise<{ promptIds: number[]; ids: number[]; text: string }> {
    checkString(prompt, 'prompt');
    const tok = this.requireTokenizer();
    const chat = checkBool(opts.chat ?? false, 'chat');
    const promptIds = chat
      ? tok.encode(tok.applyChatTemplate([{ role: 'user', content: prompt }], { addGenerationPrompt: true }), { addSpecialTokens: false })
      : tok.encode(prompt, { addSpecialTokens: true });
    const { chat: _c, ...g } = opts;
    const [ids] = await this.generate([promptIds], g);
    return { promptIds, ids, text: tok.decode(ids, { skipSpecialTokens: true }) };
  }

  /** Writes a Hugging Face directory (config.json, safetensors, tokenizer files) that transformers and torch-dpo load. */
  async save(dir: string, opts: { dtype?: DType | '' } = {}): Promise<void> {
    checkString(dir, 'dir', { nonEmpty: true });
    const dtype = opts.dtype ? checkDType(opts.dtype, 'dtype') : '';
    fs.mkdirSync(dir, { recursive: true });
    await callNative(`saving to ${dir}`, () => this.native.save(path.resolve(dir), dtype));
    if (this.dir) {
      for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'chat_template.jinja', 'generation_config.json']) {
        const src = path.join(this.dir, f);
        if (fs.existsSync(src) && path.resolve(src) !== path.resolve(path.join(dir, f))) fs.copyFileSync(src, path.join(dir, f));
      }
    }
  }

  /**
   * Attaches fresh LoRA adapters to the matched linear layers (PEFT's init: A kaiming-uniform drawn with `seed`, B = 0,
   * so the outputs are unchanged) and freezes the base weights: trainers made afterwards train only the adapters.
   * Throws, listing the model's linear module names, when a target matches none.
   */
  async addLora(opts: LoraOptions = {}, seed = 0): Promise<AdapterInfo> {
    const o = resolveLoraOptions(opts, String(this.config.model_type), 'lora');
    checkInt(seed, 'seed', 0, 2 ** 31 - 1);
    return JSON.parse(await callNative('Model.addLora', () => this.native.attachLora(JSON.stringify(o), seed)));
  }

  /** Attaches the PEFT adapter in `dir` (adapter_config.json + adapter_model.safetensors); base weights frozen. */
  async loadAdapter(dir: string): Promise<AdapterInfo> {
    checkString(dir, 'adapter directory', { nonEmpty: true });
    return JSON.parse(await callNative(`loading the adapter ${dir}`, () => this.native.loadAdapter(path.resolve(dir))));
  }

  /** Writes the adapters in PEFT's layout (adapter_config.json + adapter_model.safetensors, float32) to `dir`. */
  async saveAdapter(dir: string): Promise<void> {
    checkString(dir, 'dir', { nonEmpty: true });
    fs.mkdirSync(dir, { recursive: true });
    const base = this.dir ? path.resolve(this.dir) : '';
    await callNative(`saving the adapter to ${dir}`, () => this.native.saveAdapter(path.resolve(dir), base));
  }

  /** Folds the adapters into the base weights (W += (alpha/r)·B·A) and removes them; save() then writes merged weights. */
  async mergeAdapters(): Promise<void> {
    await callNative('Model.mergeAdapters', () => this.native.mergeAdapters());
  }

  /** The attached LoRA adapters, or undefined. */
  get adapters(): AdapterInfo | undefined {
    const info = JSON.parse(callNativeSync('Model.adapters', () => this.native.adapterInfo()));
    return info ?? undefined;
  }

  /** sequenceLogps of the base model: the LoRA adapters switched off for this call only (the DPO reference). */
  async baseSequenceLogps(inputIds: Int32Array, attentionMask: Int32Array, labels: Int32Array, rows: number, T: number, chunkRows = 1024, paddingFree = false): Promise<SequenceLogps> {
    checkLogpsArgs(rows, T, chunkRows, paddingFree);
    return callNative('Model.baseSequenceLogps', () => this.native.baseSequenceLogps(inputIds, attentionMask, labels, rows, T, chunkRows, paddingFree));
  }

  requireTokenizer(): Tokenizer {
    if (!this.tokenizer) throw new Error(`${this.dir ?? 'this model'}: no tokenizer.json, but text input needs one`);
    return this.tokenizer;
  }

  get disposed(): boolean {
    return !this.handle;
  }

  /** Frees the native weights now (idempotent). */
  dispose(): void {
    this.handle?.dispose();
    this.handle = undefined;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }
}

/** The shape arguments of sequenceLogps / baseSequenceLogps (the arrays are checked natively against them). */
function checkLogpsArgs(rows: number, T: number, chunkRows: number, paddingFree: boolean): void {
  checkInt(rows, 'rows', 1);
  checkInt(T, 'T', 1);
  checkInt(chunkRows, 'chunkRows', 1);
  checkBool(paddingFree, 'paddingFree');
}

/** Unpadded token id lists (checked against the vocabulary) -> a right-padded (rows, T) batch and its 0/1 mask. */
function rightPadded(sequences: number[][], vocabSize: number): { ids: Int32Array; mask: Int32Array; rows: number; T: number } {
  if (!Array.isArray(sequences) || sequences.length === 0) fail('a non-empty array of token id arrays', 'sequences', sequences);
  sequences.forEach((s, i) => {
    checkTokenIds(s, `sequences[${i}]`, vocabSize);
    if (s.length < 1) fail('at least 1 token', `sequences[${i}]`, s);
  });
  const rows = sequences.length;
  const T = Math.max(...sequences.map((s) => s.length));
  const ids = new Int32Array(rows * T);
  const mask = new Int32Array(rows * T);
  sequences.forEach((s, r) => s.forEach((t, i) => ((ids[r * T + i] = t), (mask[r * T + i] = 1))));
  return { ids, mask, rows, T };
}
