// tokenizeExamplesParallel must reproduce tokenizeExamples exactly: examples, order, stats and errors.
import test from 'ava';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tokenizer } from '../../lib/tokenizer';
import { TokenizeOptions, TokenizedExample, newStats, readRecords, tokenizeExamples, tokenizeExamplesParallel } from '../../lib/data';

const TOK = join(__dirname, '..', '..', '..', 'test', 'fixtures', 'tokenizers');
const dir = mkdtempSync(join(tmpdir(), 'tdpo-par-'));
const words = ['hello', 'world', 'the', 'there', 'café', 'OK', '😀', '\n\n', '\t', '12'];
const text = (i: number, n: number) => Array.from({ length: n }, (_, k) => words[(i * 7 + k * 3) % words.length]).join(' ');

function writeData(name: string, n: number, bad?: number): string {
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    if (i === bad) lines.push('{"prompt": "x", "chosen": 3, "rejected": "y"}');
    else if (i % 11 === 5) lines.push(JSON.stringify({ prompt: text(i, 5), chosen: 'same', rejected: 'same' }));
    else if (i % 2 === 0) lines.push(JSON.stringify({ prompt: text(i, 3 + (i % 17)), chosen: text(i + 1, 2 + (i % 9)), rejected: text(i + 2, 1 + (i % 5)) }));
    else {
      lines.push(JSON.stringify({
        prompt: [{ role: 'system', content: text(i, 2) }, { role: 'user', content: text(i, 4 + (i % 7)) }],
        chosen: [{ role: 'assistant', content: text(i + 3, 3) }],
        rejected: [{ role: 'assistant', content: text(i + 4, 2 + (i % 3)) }],
      }));
    }
  }
  const p = join(dir, name);
  writeFileSync(p, lines.join('\n') + '\n');
  return p;
}

async function run(gen: AsyncIterable<TokenizedExample>): Promise<{ out: TokenizedExample[]; err?: string }> {
  const out: TokenizedExample[] = [];
  try {
    for await (const e of gen) out.push(e);
  } catch (e) {
    return { out, err: (e as Error).message };
  }
  return { out };
}

test('parallel tokenization equals sequential: examples, order, stats', async (t) => {
  const tok = await Tokenizer.fromDir(join(TOK, 'llama3-tiny'));
  const p = writeData('ok.jsonl', 700);
  const base: TokenizeOptions = { maxLength: 110, maxPromptLength: 70, onIdentical: 'skip' };
  for (const overlongPolicy of ['truncate', 'drop'] as const) {
    const s1 = newStats();
    const s2 = newStats();
    const seq = await run(tokenizeExamples(readRecords(p), tok, { ...base, overlongPolicy, stats: s1 }));
    const par = await run(tokenizeExamplesParallel(readRecords(p), tok, { ...base, overlongPolicy, stats: s2, workers: 2, chunkSize: 16 }));
    t.is(seq.err, undefined);
    t.is(par.err, undefined);
    t.true(seq.out.length > 200, `${overlongPolicy}: ${seq.out.length}`);
    t.deepEqual(par.out, seq.out);
    t.deepEqual(s2, s1);
    t.log(overlongPolicy, s1);
    t.true(s1.skippedIdentical > 0 && (overlongPolicy === 'drop' ? s1.dropped > 0 : s1.truncated > 0));
  }
});

test('parallel tokenization reports the same error after the same examples', async (t) => {
  const tok = await Tokenizer.fromDir(join(TOK, 'llama3-tiny'));
  const p = writeData('bad.jsonl', 300, 137);
  const seq = await run(tokenizeExamples(readRecords(p), tok, { onIdentical: 'skip' }));
  const par = await run(tokenizeExamplesParallel(readRecords(p), tok, { onIdentical: 'skip', workers: 3, chunkSize: 10 }));
  t.is(seq.err, `${p}:138: Expected a non-empty string for chosen but received 3`);
  t.is(par.err, seq.err);
  t.deepEqual(par.out, seq.out);
});

test('a consumer that stops early ends the workers', async (t) => {
  const tok = await Tokenizer.fromDir(join(TOK, 'chatml-tiny'));
  const p = writeData('stop.jsonl', 400);
  let n = 0;
  for await (const _ of tokenizeExamplesParallel(readRecords(p), tok, { onIdentical: 'skip', workers: 2, chunkSize: 8 })) {
    void _;
    if (++n === 5) break;
  }
  t.is(n, 5);
  await t.throwsAsync(run(tokenizeExamplesParallel(readRecords(p), tok, { workers: 0 })).then((r) => { if (r.err) throw new Error(r.err); }), {
    message: 'Expected an integer in [1, 256] for workers but received 0',
  });
});
