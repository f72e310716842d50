// Test fixtures built from real code paths: a tiny random Llama (demo config + tokenizer) saved as a Hugging Face
// directory, preference data from the demo task, and a plain reader of float32 safetensors for comparing weights.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Model } from '../../../lib/model';
import { DPOTrainer } from '../../../lib/trainer/dpo_trainer';
import type { DPOTrainerOptions } from '../../../lib/trainer/options';
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

/** Reads every tensor of a float32 safetensors file of a directory (model.safetensors by default) as Float32Array by name. */
export function readWeights(dir: string, file = 'model.safetensors'): Map<string, Float32Array> {
  const buf = fs.readFileSync(path.join(dir, file));
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

/** False (after logging why, or failing under CI where setup installs it) when /usr/bin/python3 has no torch. */
export function havePythonTorch(t: { fail: (m: string) => void; log: (m: string) => void }): boolean {
  if (pythonTorchAvailable()) return true;
  if (process.env.CI) t.fail(`${PYTHON} with torch is needed (scripts/setup.sh installs python3-torch)`);
  else t.log(`SKIPPED: ${PYTHON} has no torch (apt-get install python3-torch)`);
  return false;
}

/**
 * Runs a forward-pass reference script of test/reference/ (reference.py, transformers_ref.py) over the model folder
 * `dir` with `input` as its IN.json, writing under `work`; returns its OUT.json. Throws with the script's stderr.
 */
export function referenceForward(script: string, dir: string, input: unknown, work: string, extraArgs: string[] = []): any {
  const inFile = path.join(work, `in-${path.basename(dir)}.json`);
  const outFile = path.join(work, `out-${path.basename(dir)}.json`);
  fs.writeFileSync(inFile, JSON.stringify(input));
  const r = spawnSync(PYTHON, [path.join(ROOT, 'test/reference', script), '--model', dir, '--input', inFile, '--out', outFile, ...extraArgs], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${script} failed on ${dir}:\n${r.stderr}`);
  return JSON.parse(fs.readFileSync(outFile, 'utf8'));
}

/**
 * One SGD step with lr 1 and no clipping through the CLI (`cliArgs` = subcommand and its loss options) over six
 * pairs, compared with test/reference/dpo_grad.py's float64 autograd gradient (`pyArgs` = its loss options): the
 * weight change must equal minus the gradient to 1e-4 relative, and the logged loss the float64 loss.
 */
export function checkSgdStepAgainstFloat64(
  t: { is: (a: unknown, b: unknown, m?: string) => void; true: (v: boolean, m?: string) => void; log: (m: string) => void },
  o: { name: string; work: string; policyDir: string; cliArgs: string[]; pyArgs: string[] },
): void {
  const out = path.join(o.work, `sgd-${o.name.replace(/\W+/g, '_')}`);
  const six = writeJsonl(path.join(o.work, 'six.jsonl'), pairRecords(6, 11));
  const r = runCli([...o.cliArgs, '--policy', o.policyDir, '--data', six, '--optimizer', 'sgd', '--learning-rate', '1.0', '--batch-size', '6',
    '--max-steps', '1', '--no-shuffle', '--max-grad-norm', '0', '--logging-steps', '1', '--dtype', 'float32', '--device', 'cpu', '--output', out,
    '--no-progress', '--no-report']);
  t.is(r.code, 0, r.stderr);
  const tok = runCli(['tokenize', '--model', o.policyDir, '--data', six]);
  t.is(tok.code, 0, tok.stderr);
  const tokFile = path.join(out, 'six.tok.jsonl');
  fs.writeFileSync(tokFile, tok.stdout);
  const py = spawnSync(PYTHON, [path.join(ROOT, 'test/reference/dpo_grad.py'), '--policy', o.policyDir, '--pairs', tokFile, '--after', latest(out), ...o.pyArgs], { encoding: 'utf8' });
  t.is(py.status, 0, py.stderr);
  const res = JSON.parse(py.stdout);
  const logged = JSON.parse(fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n')[0]);
  t.log(`float64 loss ${res.loss}, torch-dpo loss ${logged.loss}; gradient rel. error ${res.rel_err.toExponential(2)} (worst tensor ${res.worst} ${res.max_tensor_rel_err.toExponential(2)}), |g| ${res.grad_norm.toFixed(4)}`);
  t.true(res.grad_norm > 1e-3, 'the gradient must not be trivial');
  t.true(res.rel_err < 1e-4, `relative gradient error ${res.rel_err}`);
  t.true(Math.abs(logged.loss - res.loss) <= 1e-5 * Math.max(1, Math.abs(res.loss)), `loss ${logged.loss} vs ${res.loss}`);
}

/** Runs a DPOTrainer to the end (disposing it) and returns every yielded metrics row and the final weights. */
export async function trainToEnd(opts: DPOTrainerOptions): Promise<{ metrics: Record<string, number>[]; weights: Map<string, Float32Array> }> {
  const t = await DPOTrainer.create(opts);
  const metrics: Record<string, number>[] = [];
  try {
    for await (const m of t.train()) metrics.push(m);
  } finally {
    await t[Symbol.asyncDispose]();
  }
  return { metrics, weights: readWeights(latest(opts.outputDir)) };
}
