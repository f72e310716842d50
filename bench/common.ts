// Shared by the benchmark scripts: command-line flags, seeded random token data, the random Llama they measure, and a
// saved model directory with a placeholder tokenizer (the trainer needs one; benchmark data is pre-tokenized).
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { Model } from '../lib/model';

/** The word after `--name` on the command line, else `def`. */
export function flag(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
}

/** The number after `--name` on the command line, else `def`. */
export function arg(name: string, def: number): number {
  return Number(flag(name, String(def)));
}

/** A seeded linear congruential generator of integers in [0, 2^31). */
export function lcg(seed: number): () => number {
  let s = seed;
  return () => (s = (s * 1103515245 + 12345) % 2 ** 31);
}

/** Seeded random token ids in [4, vocab) (0-3 are the placeholder tokenizer's special tokens). */
export function randomTokens(seed: number, vocab: number): () => number {
  const next = lcg(seed);
  return () => 4 + (next() % (vocab - 4));
}

/**
 * `n` pre-tokenized pairs written to `file` as JSONL: a BOS + random prompt of `prompt` tokens, chosen and rejected
 * completions of `seq - prompt` random tokens ending with EOS (2), so every sequence is `seq` tokens long.
 */
export function writeRandomPairs(file: string, n: number, seq: number, prompt: number, vocab: number): string {
  const rnd = randomTokens(7, vocab);
  const rows = Array.from({ length: n }, () => ({
    prompt_ids: [1, ...Array.from({ length: prompt - 1 }, rnd)],
    chosen_ids: [...Array.from({ length: seq - prompt - 1 }, rnd), 2],
    rejected_ids: [...Array.from({ length: seq - prompt - 1 }, rnd), 2],
  }));
  fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  return file;
}

/** A full (no padding) random trainer batch of `rows` × `T` for the native trainer: the first quarter and last token unscored. */
export function randomTrainerBatch(rows: number, T: number, vocab: number, seed: number): { ids: Int32Array; mask: Int32Array; labels: Int32Array } {
  const ids = Int32Array.from({ length: rows * T }, randomTokens(seed, vocab));
  const mask = new Int32Array(rows * T).fill(1);
  const labels = Int32Array.from({ length: rows * T }, (_, i) => (i % T < T / 4 || i % T === T - 1 ? -100 : ids[i + 1]));
  return { ids, mask, labels };
}

export interface BenchModelSize {
  hidden: number;
  layers: number;
  vocab: number;
}

/** A Llama config.json object: 8 query / 4 KV heads, SwiGLU width ≈ 8/3·hidden, untied head, float32. */
export function benchLlamaConfig(m: BenchModelSize): Record<string, unknown> {
  return {
    model_type: 'llama', vocab_size: m.vocab, hidden_size: m.hidden, intermediate_size: Math.round((m.hidden * 8) / 3 / 8) * 8,
    num_hidden_layers: m.layers, num_attention_heads: 8, num_key_value_heads: 4, max_position_embeddings: 4096, rms_norm_eps: 1e-6,
    rope_theta: 10000, tie_word_embeddings: false, hidden_act: 'silu', bos_token_id: 1, eos_token_id: 2, pad_token_id: 0, torch_dtype: 'float32',
  };
}

/** Saves a random (seed 1) bench Llama with a WordPiece tokenizer over placeholder words into `dir`; returns `dir`. */
export async function writeBenchModel(dir: string, m: BenchModelSize): Promise<string> {
  {
    await using model = await Model.create(benchLlamaConfig(m), { seed: 1 });
    await model.save(dir);
  }
  writePlaceholderTokenizer(dir, m.vocab);
  return dir;
}

/** A WordPiece tokenizer over placeholder words (ids 0-3 special, then w4 … w{vocab-1}) for pre-tokenized benchmark data. */
export function writePlaceholderTokenizer(dir: string, vocabSize: number): void {
  const vocab: Record<string, number> = { '<pad>': 0, '<bos>': 1, '<eos>': 2, '<unk>': 3 };
  for (let i = 4; i < vocabSize; i++) vocab[`w${i}`] = i;
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify({
    version: '1.0', added_tokens: ['<pad>', '<bos>', '<eos>', '<unk>'].map((c, id) => ({ id, content: c, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: null, pre_tokenizer: { type: 'WhitespaceSplit' }, post_processor: null, decoder: { type: 'WordPiece', prefix: '##', cleanup: false },
    model: { type: 'WordPiece', unk_token: '<unk>', continuing_subword_prefix: '##', max_input_chars_per_word: 100, vocab },
  }));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<bos>', eos_token: '<eos>', pad_token: '<pad>', unk_token: '<unk>' }));
}

/** A loopback TCP port nobody listens on right now (bound to 0, read back, released). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const p = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(p));
    });
  });
}
