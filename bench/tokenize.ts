// Tokenization throughput: examples/s for the standard and conversational pipelines (read JSONL -> tokenize ->
// batch), sequential and on worker threads. Usage: node dist/bench/tokenize.js [tokenizerDir] [examples] [workers]
// Default tokenizer: test/fixtures/tokenizers/llama3-tiny (a tiny vocabulary: real vocabularies merge more, so
// treat the numbers as the pipeline's overhead, not a model's tokenizer speed).
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tokenizer } from '../lib/tokenizer';
import { TokenizedExample, batchPairs, readJsonl, tokenizeExamples, tokenizeExamplesParallel } from '../lib/data';

async function main(): Promise<void> {
  const root = join(__dirname, '..', '..');
  const tokDir = process.argv[2] ?? join(root, 'test', 'fixtures', 'tokenizers', 'llama3-tiny');
  const n = Number(process.argv[3] ?? 2000);
  const workers = Number(process.argv[4] ?? 2);
  const tok = await Tokenizer.fromDir(tokDir);
  const dir = mkdtempSync(join(tmpdir(), 'tdpo-bench-'));
  const words = ['hello', 'world', 'the', 'there', 'café', 'OK', 'user', 'tokens', 'preference', '😀', '12345', '\n\n'];
  const text = (i: number, len: number) => Array.from({ length: len }, (_, k) => words[(i * 7 + k * 3) % words.length]).join(' ');
  const std: string[] = [];
  const conv: string[] = [];
  for (let i = 0; i < n; i++) {
    std.push(JSON.stringify({ prompt: text(i, 60), chosen: text(i + 1, 120), rejected: text(i + 2, 100) }));
    if (tok.hasChatTemplate()) {
      conv.push(JSON.stringify({
        prompt: [{ role: 'system', content: text(i, 10) }, { role: 'user', content: text(i, 50) }],
        chosen: [{ role: 'assistant', content: text(i + 1, 120) }],
        rejected: [{ role: 'assistant', content: text(i + 2, 100) }],
      }));
    }
  }
  const runs: [string, string[]][] = [['standard', std]];
  if (conv.length > 0) runs.push(['conversational', conv]);
  for (const [name, lines] of runs) {
    const p = join(dir, `${name}.jsonl`);
    writeFileSync(p, lines.join('\n') + '\n');
    for (const w of [0, workers]) {
      const t0 = process.hrtime.bigint();
      let examples = 0;
      let tokens = 0;
      const src: AsyncIterable<TokenizedExample> = w === 0
        ? tokenizeExamples(readJsonl(p), tok, { maxLength: 4096 })
        : tokenizeExamplesParallel(readJsonl(p), tok, { maxLength: 4096, workers: w });
      for await (const b of batchPairs(src, { batchSize: 16, padTokenId: tok.padTokenId ?? 0 })) {
        examples += b.size;
        for (const x of b.lengths) tokens += x;
      }
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      const mode = w === 0 ? 'sequential' : `${w} workers`;
      console.log(`${name} (${mode}): ${examples} examples in ${s.toFixed(2)} s = ${(examples / s).toFixed(0)} examples/s, ${(tokens / s / 1e3).toFixed(0)}k tokens/s`);
    }
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
