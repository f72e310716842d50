// A causal LM loaded from a Hugging Face directory (or made with random weights), with its tokenizer.
// Owns native memory: dispose() (idempotent) or `await using`.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { callNative, callNativeSync, NativeModelHandle } from './native';
import { addon } from './runtime';
import { Tokenizer } from './tokenizer';
import { checkBool, checkDevice, checkDType, checkInt, checkNumber, checkObject, checkString, checkTokenIds, Device, DType, fail } from './validate';

export interface ModelLoadOptions {
  /** 'cpu' (default), 'cuda' or 'cuda:N'. */
  device?: Device;
  /** Compute dtype: 'float32' (default; the only one on CPU) or 'bfloat16' / 'float16' on CUDA. */
  dtype?: DType;
}

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
    if (!fs.existsSync(path.join(dir, 'config.json'))) throw new Error(`${path.join(dir, 'config.json')}: not found (expected a Hugging Face model directory)`);
    const tokenizer = fs.existsSync(path.join(dir, 'tokenizer.json')) ? await Tokenizer.fromDir(dir) : undefined;
    const handle = await callNative(`loading ${dir}`, () => addon().loadModel(path.resolve(dir), device, dtype));
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
  async sequenceLogps(inputIds: Int32Array, attentionMask: Int32Array, labels: Int32Array, rows: number, T: number, chunkRows = 1024): Promise<SequenceLogps> {
    checkInt(rows, 'rows', 1);
    checkInt(T, 'T', 1);
    checkInt(chunkRows, 'chunkRows', 1);
    return callNative('Model.sequenceLogps', () => this.native.sequenceLogps(inputIds, attentionMask, labels, rows, T, chunkRows));
  }

  /** Per-token log p(x_t | x_<t) of each sequence (unpadded lists of ids); entry 0 of each row is omitted. */
  async tokenLogps(sequences: number[][]): Promise<Float32Array[]> {
    if (!Array.isArray(sequences) || sequences.length === 0) fail('a non-empty array of token id arrays', 'sequences', sequences);
    sequences.forEach((s, i) => {
      checkTokenIds(s, `sequences[${i}]`, this.vocabSize);
      if (s.length < 1) fail('at least 1 token', `sequences[${i}]`, s);
    });
    const rows = sequences.length;
    const T = Math.max(...sequences.map((s) => s.length));
    const ids = new Int32Array(rows * T);
    const mask = new Int32Array(rows * T);
    sequences.forEach((s, r) => s.forEach((t, i) => ((ids[r * T + i] = t), (mask[r * T + i] = 1))));
    const out = await callNative('Model.tokenLogps', () => this.native.tokenLogps(ids, mask, rows, T));
    return sequences.map((s, r) => out.slice(r * T + 1, r * T + s.length));
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
