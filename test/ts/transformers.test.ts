// torch-dpo against Hugging Face transformers itself.
// Every run: the committed goldens of test/fixtures/transformers/ (written by transformers 5 through
// test/reference/transformers_golden.py): token log-probs of every architecture fixture in one padded batch vs
// transformers' float64 values of each sequence alone, greedy tokens vs transformers' generate(), token ids and chat
// templates vs transformers' tokenizers.
// With TORCH_DPO_TRANSFORMERS=1 (scripts/check-sid.sh, where python3 has transformers): live checks that
// transformers loads what torch-dpo saves (causal LMs after training, reward models) and computes the same numbers.
import test, { ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Model } from '../../lib/model';
import { Tokenizer } from '../../lib/tokenizer';
import { makeModelDir, pairRecords, ROOT, runCli, latest, referenceForward, tmpDir, writeJsonl } from './helpers/fixtures';

const GOLDEN = path.join(ROOT, 'test', 'fixtures', 'transformers');
const LIVE = process.env.TORCH_DPO_TRANSFORMERS === '1';
const work = tmpDir('transformers');

// Must equal SEQUENCES / GENERATE of test/reference/transformers_golden.py.
const SEQUENCES = [[3, 17, 42, 8, 91, 5, 60], [11, 2], [7, 7, 7, 30, 64, 12, 1, 0, 95, 44, 18], [50, 51, 52, 53, 54]];
const PROMPTS = [[3, 17, 42], [7, 7, 7, 30, 64], [9]];

interface Golden { token_logps: number[][]; greedy: number[][]; versions: Record<string, string> }

const fixtures = fs.readdirSync(GOLDEN).filter((d) => fs.existsSync(path.join(GOLDEN, d, 'golden.json'))).sort();

test('the transformers goldens are all there', (t) => {
  t.deepEqual(fixtures, ['gpt2', 'gpt2-f16', 'llama-gqa1-llama3rope', 'llama-tied-linear-bias-hd16', 'mistral-window4', 'qwen2-tied-bf16-sharded']);
});

/** Worst per-sequence |Δ sum log p| and worst per-token |Δ log p| of torch-dpo's batched log-probs vs `want`. */
function compareLogps(got: Float32Array[], want: number[][]): { seq: number; token: number } {
  let seq = 0;
  let token = 0;
  want.forEach((w, i) => {
    let a = 0;
    let b = 0;
    w.forEach((x, j) => {
      a += got[i][j];
      b += x;
      token = Math.max(token, Math.abs(got[i][j] - x));
    });
    seq = Math.max(seq, Math.abs(a - b));
  });
  return { seq, token };
}

for (const name of fixtures) {
  test.serial(`${name}: log-probs (one padded batch) and greedy tokens equal transformers'`, async (t) => {
    const golden: Golden = JSON.parse(fs.readFileSync(path.join(GOLDEN, name, 'golden.json'), 'utf8'));
    await using m = await Model.load(path.join(GOLDEN, name));
    const got = await m.tokenLogps(SEQUENCES);
    got.forEach((g, i) => t.is(g.length, golden.token_logps[i].length, `sequence ${i} length`));
    const d = compareLogps(got, golden.token_logps);
    t.log(`transformers ${golden.versions.transformers}: worst |Δ log p| per sequence ${d.seq.toExponential(2)}, per token ${d.token.toExponential(2)}`);
    t.true(d.seq < 1e-4, `per-sequence log-prob difference ${d.seq}`);
    const greedy = await m.generate(PROMPTS, { maxNewTokens: 8, eosTokenIds: [] });
    t.deepEqual(greedy, golden.greedy);
  });
}

interface TokGolden {
  texts: string[];
  conversations: Array<Array<{ role: string; content: string }>>;
  tokenizers: Record<string, {
    encode: number[][];
    encode_no_special: number[][];
    decode: string[];
    chat?: Array<{ add_generation_prompt: boolean; text: string; ids: number[] }>;
  }>;
}
const tokGolden: TokGolden = JSON.parse(fs.readFileSync(path.join(GOLDEN, 'tokenizers.json'), 'utf8'));

for (const [name, g] of Object.entries(tokGolden.tokenizers)) {
  test(`${name}: token ids, decoding and chat templates equal transformers'`, async (t) => {
    const tok = await Tokenizer.fromDir(path.join(ROOT, 'test', 'fixtures', 'tokenizers', name));
    tokGolden.texts.forEach((text, i) => {
      t.deepEqual(tok.encode(text), g.encode[i], `encode ${JSON.stringify(text)}`);
      t.deepEqual(tok.encode(text, { addSpecialTokens: false }), g.encode_no_special[i], `encode (no special tokens) ${JSON.stringify(text)}`);
      t.is(tok.decode(g.encode_no_special[i]), g.decode[i], `decode ${JSON.stringify(text)}`);
    });
    if (g.chat) {
      let k = 0;
      for (const conv of tokGolden.conversations) {
        for (const addGenerationPrompt of [false, true]) {
          const want = g.chat[k++];
          t.is(want.add_generation_prompt, addGenerationPrompt);
          const text = tok.applyChatTemplate(conv, { addGenerationPrompt });
          t.is(text, want.text, `chat template (add_generation_prompt ${addGenerationPrompt}) of ${JSON.stringify(conv)}`);
          t.deepEqual(tok.encode(text, { addSpecialTokens: false }), want.ids);
        }
      }
    } else {
      t.false(tok.hasChatTemplate(), 'transformers found no chat template either');
    }
  });
}

/** transformers_ref.py over `dir` (live mode only). */
function transformers(dir: string, input: unknown, task: 'causal-lm' | 'score' = 'causal-lm'): any {
  return referenceForward('transformers_ref.py', dir, input, work, ['--task', task]);
}

/** Live checks run with TORCH_DPO_TRANSFORMERS=1; otherwise they are listed as skipped, with the reason in the title. */
function live(title: string, fn: (t: ExecutionContext) => Promise<void>): void {
  if (LIVE) test.serial(title, fn);
  else test.serial.skip(`${title} (needs TORCH_DPO_TRANSFORMERS=1 and python3 with transformers: scripts/check-sid.sh)`, fn);
}

live('save -> transformers loads every fixture architecture and computes the same log-probs', async (t) => {
  for (const name of fixtures) {
    const out = path.join(work, `saved-${name}`);
    {
      await using m = await Model.load(path.join(GOLDEN, name));
      await m.save(out, { dtype: 'float32' });
    }
    const ref = transformers(out, { sequences: SEQUENCES });
    const golden: Golden = JSON.parse(fs.readFileSync(path.join(GOLDEN, name, 'golden.json'), 'utf8'));
    await using back = await Model.load(out);
    const d = compareLogps(await back.tokenLogps(SEQUENCES), ref.token_logps);
    // float32 save of a bf16 / f16 checkpoint is exact, so transformers must reproduce its own golden too.
    const g = compareLogps(ref.token_logps.map((r: number[]) => Float32Array.from(r)), golden.token_logps);
    t.log(`${name}: saved by torch-dpo, loaded by transformers: |Δ| vs torch-dpo ${d.seq.toExponential(2)}, vs the original's golden ${g.seq.toExponential(2)}`);
    t.true(d.seq < 1e-4 && g.seq < 1e-4, name);
  }
});

live('a DPO-trained checkpoint (CLI) loads in transformers with the same log-probs', async (t) => {
  const model = await makeModelDir(path.join(work, 'demo-model'), 3);
  const data = writeJsonl(path.join(work, 'pairs.jsonl'), pairRecords(8, 1));
  const outDir = path.join(work, 'dpo-out');
  const r = runCli(['train', '--policy', model, '--reference', model, '--data', data, '--output', outDir, '--batch-size', '4', '--max-steps', '2', '--learning-rate', '1e-2', '--no-progress', '--no-report']);
  t.is(r.code, 0, r.stderr);
  const trained = latest(outDir);
  const seqs = SEQUENCES.map((s) => s.map((x) => (x * 7) % 50));
  const ref = transformers(trained, { sequences: seqs });
  await using m = await Model.load(trained);
  await using base = await Model.load(model);
  const d = compareLogps(await m.tokenLogps(seqs), ref.token_logps);
  const moved = compareLogps(await base.tokenLogps(seqs), ref.token_logps);
  t.log(`trained checkpoint: |Δ| torch-dpo vs transformers ${d.seq.toExponential(2)} (vs the untrained model ${moved.seq.toExponential(2)})`);
  t.true(d.seq < 1e-4);
  t.true(moved.seq > 1e-3, 'training changed the model');
});

live('a reward model saved by torch-dpo loads as transformers\' …ForSequenceClassification with the same scores', async (t) => {
  const causal = path.join(GOLDEN, 'llama-gqa1-llama3rope');
  const out = path.join(work, 'reward');
  {
    await using rm = await Model.load(causal, { head: 'score', seed: 9 });
    await rm.save(out);
  }
  const cfg = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
  t.deepEqual(cfg.architectures, ['LlamaForSequenceClassification']);
  const seqs = SEQUENCES.map((s) => s.map((x) => (x % 90) + 1)); // no pad id (0) inside
  const ref = transformers(out, { sequences: seqs }, 'score');
  await using back = await Model.load(out);
  const got = await back.rewards(seqs);
  const worst = Math.max(...ref.scores.map((s: number, i: number) => Math.abs(s - got[i])));
  t.log(`reward scores: worst |Δ| ${worst.toExponential(2)} over ${seqs.length} sequences`);
  t.true(worst < 1e-4);
});
