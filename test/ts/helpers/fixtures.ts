// Test fixtures built from real code paths: a tiny random Llama (demo config + tokenizer) saved as a Hugging Face
// directory, preference data from the demo task, and a plain reader of float32 safetensors for comparing weights.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Model } from '../../../lib/model';
import { mulberry32 } from '../../../lib/data/shuffle';
import { promptText, sampleReview, TOPICS } from '../../../lib/demo/sentiment_task';

export const ROOT = path.resolve(__dirname, '..', '..', '..', '..');
export const CLI = path.join(ROOT, 'dist', 'lib', 'cli.js');
export const DEMO_MODEL = path.join(ROOT, 'demo', 'model');

export function tmpDir(name: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `tdpo-${name}-`));
}

/** A random tiny Llama saved with the demo tokenizer. */
export async function makeModelDir(dir: string, seed: number, overrides: Record<string, unknown> = {}): Promise<string> {
  const config = { ...JSON.parse(fs.readFileSync(path.join(DEMO_MODEL, 'config.json'), 'utf8')), ...overrides };
  const m = await Model.create(config, { seed });
  try {
    await m.save(dir);
  } finally {
    m.dispose();
  }
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(DEMO_MODEL, f), path.join(dir, f));
  return dir;
}

/** n standard-format preference records (distinct reviews as chosen / rejected). */
export function pairRecords(n: number, seed: number): Array<{ prompt: string; chosen: string; rejected: string }> {
  const rand = mulberry32(seed);
  return Array.from({ length: n }, () => {
    const prompt = promptText(TOPICS[Math.floor(rand() * TOPICS.length)]);
    const chosen = sampleReview(rand, 0.8);
    let rejected = sampleReview(rand, 0.2);
    while (rejected === chosen) rejected = sampleReview(rand, 0.2);
    return { prompt, chosen, rejected };
  });
}

export function writeJsonl(file: string, rows: unknown[]): string {
  fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  return file;
}

/** Reads every tensor of a float32 safetensors file (model.safetensors of a directory) as Float32Array by name. */
export function readWeights(dir: string): Map<string, Float32Array> {
  const buf = fs.readFileSync(path.join(dir, 'model.safetensors'));
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const out = new Map<string, Float32Array>();
  for (const [k, v] of Object.entries<any>(header)) {
    if (k === '__metadata__') continue;
    if (v.dtype !== 'F32') throw new Error(`${k}: expected F32, got ${v.dtype}`);
    const [b, e] = v.data_offsets;
    const bytes = buf.subarray(8 + n + b, 8 + n + e);
    out.set(k, new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)));
  }
  return out;
}

/** max |a-b| / max(|b|) over all tensors, and whether every tensor is bit-identical. */
export function compareWeights(a: Map<string, Float32Array>, b: Map<string, Float32Array>): { maxRel: number; identical: boolean } {
  let maxRel = 0;
  let identical = a.size === b.size;
  for (const [k, x] of a) {
    const y = b.get(k);
    if (!y || y.length !== x.length) return { maxRel: Infinity, identical: false };
    let diff = 0;
    let scale = 1e-30;
    for (let i = 0; i < x.length; i++) {
      diff = Math.max(diff, Math.abs(x[i] - y[i]));
      scale = Math.max(scale, Math.abs(y[i]));
      if (x[i] !== y[i]) identical = false;
    }
    maxRel = Math.max(maxRel, diff / scale);
  }
  return { maxRel, identical };
}

export function runCli(args: string[], opts: { cwd?: string } = {}): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', cwd: opts.cwd ?? ROOT, timeout: 300000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

export function latest(outputDir: string): string {
  return path.join(outputDir, fs.readFileSync(path.join(outputDir, 'latest'), 'utf8').trim());
}

export const PYTHON = '/usr/bin/python3';
export function pythonTorchAvailable(): boolean {
  return spawnSync(PYTHON, ['-c', 'import torch'], { encoding: 'utf8' }).status === 0;
}
