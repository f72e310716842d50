// Shuffling, train/eval splits, batch layout and bounded-memory streaming.
import test from 'ava';
import { createWriteStream, mkdtempSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { Tokenizer } from '../../lib/tokenizer';
import {
  IGNORE_INDEX, PreferenceExample, batchPairs, batchUnpaired, collatePairs, mulberry32, readJsonl, readRecords, shuffleBuffer,
  splitEval, tokenizeExamples,
} from '../../lib/data';

const ROOT = join(__dirname, '..', '..', '..');
const range = (n: number) => Array.from({ length: n }, (_, i) => i);
async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

test('mulberry32 matches its reference values', (t) => {
  // the first outputs for seed 1 must equal an independent BigInt (exact mod 2^32) evaluation of the recurrence
  const r = mulberry32(1);
  const got = [r(), r(), r()].map((x) => Math.round(x * 4294967296));
  // independent computation with BigInt arithmetic
  const ref = (() => {
    const M = 0xffffffffn;
    const imul = (x: bigint, y: bigint) => (x * y) & M;
    let a = 1n;
    const out: number[] = [];
    for (let i = 0; i < 3; i++) {
      a = (a + 0x6d2b79f5n) & M;
      let t = a;
      t = imul(t ^ (t >> 15n), t | 1n);
      t = (t ^ ((t + imul(t ^ (t >> 7n), t | 61n)) & M)) & M;
      out.push(Number((t ^ (t >> 14n)) & M));
    }
    return out;
  })();
  t.deepEqual(got, ref);
});

test('shuffleBuffer is a seeded, deterministic permutation', async (t) => {
  const a = await collect(shuffleBuffer(range(100), { bufferSize: 16, seed: 7 }));
  const b = await collect(shuffleBuffer(range(100), { bufferSize: 16, seed: 7 }));
  const c = await collect(shuffleBuffer(range(100), { bufferSize: 16, seed: 8 }));
  t.deepEqual(a, b);
  t.notDeepEqual(a, c);
  t.deepEqual([...a].sort((x, y) => x - y), range(100));
  t.notDeepEqual(a, range(100));
  // bufferSize 1 keeps the order
  t.deepEqual(await collect(shuffleBuffer(range(10), { bufferSize: 1, seed: 3 })), range(10));
  // a buffer of 16 cannot move an item earlier than 15 places before its input position
  a.forEach((v, pos) => t.true(pos >= v - 15, `item ${v} at ${pos}`));
  await t.throwsAsync(shuffleBuffer(range(3), { bufferSize: 0, seed: 1 }).next(), { message: 'Expected an integer >= 1 for bufferSize but received 0' });
});

test('shuffleBuffer with a full buffer is close to uniform', async (t) => {
  // Position of item 0 among 8 items over 4000 seeds: each position expected 500 times; a chi-square with 7
  // degrees of freedom above 30 has probability < 1e-4 for a uniform shuffle.
  const counts = new Array(8).fill(0);
  for (let seed = 0; seed < 4000; seed++) {
    const out = await collect(shuffleBuffer(range(8), { bufferSize: 8, seed }));
    counts[out.indexOf(0)]++;
  }
  const chi2 = counts.reduce((s, c) => s + (c - 500) ** 2 / 500, 0);
  t.true(chi2 < 30, `counts ${counts} chi2 ${chi2}`);
});

test('splitEval: evalEvery and seeded evalFraction partition the stream', async (t) => {
  const s1 = splitEval(range(20), { evalEvery: 4 });
  t.deepEqual(await collect(s1.eval), [3, 7, 11, 15, 19]);
  t.deepEqual(await collect(s1.train), range(20).filter((i) => i % 4 !== 3));
  const src = () => range(10000);
  const s2 = splitEval(src, { evalFraction: 0.1, seed: 5 });
  const ev = await collect(s2.eval);
  const tr = await collect(s2.train);
  t.deepEqual([...ev, ...tr].sort((x, y) => x - y), range(10000));
  t.true(ev.length > 900 && ev.length < 1100, `eval size ${ev.length}`);
  t.deepEqual(await collect(splitEval(src, { evalFraction: 0.1, seed: 5 }).eval), ev);
  t.notDeepEqual(await collect(splitEval(src, { evalFraction: 0.1, seed: 6 }).eval), ev);
  async function* gen() { yield 1; }
  t.throws(() => splitEval(gen(), { evalEvery: 2 }), { message: /re-iterable source/ });
  t.throws(() => splitEval(src, { evalEvery: 2, evalFraction: 0.5 }), { message: /exactly one of evalFraction, evalEvery/ });
});

test('collatePairs: layout, right padding, shifted labels', (t) => {
  const examples: PreferenceExample[] = [
    { prompt_ids: [5, 6], chosen_ids: [7, 8, 269], rejected_ids: [9, 269] },
    { prompt_ids: [1, 2, 3], chosen_ids: [4, 269], rejected_ids: [10, 11, 12, 269] },
  ];
  const b = collatePairs(examples, 99);
  const X = IGNORE_INDEX;
  t.is(b.T, 7);
  t.is(b.size, 2);
  // rows: chosen 0, chosen 1, rejected 0, rejected 1
  t.deepEqual([...b.inputIds], [
    5, 6, 7, 8, 269, 99, 99,
    1, 2, 3, 4, 269, 99, 99,
    5, 6, 9, 269, 99, 99, 99,
    1, 2, 3, 10, 11, 12, 269,
  ]);
  t.deepEqual([...b.attentionMask], [
    1, 1, 1, 1, 1, 0, 0,
    1, 1, 1, 1, 1, 0, 0,
    1, 1, 1, 1, 0, 0, 0,
    1, 1, 1, 1, 1, 1, 1,
  ]);
  // labels[t] = token t+1 when t+1 is a completion position
  t.deepEqual([...b.labels], [
    X, 7, 8, 269, X, X, X,
    X, X, 4, 269, X, X, X,
    X, 9, 269, X, X, X, X,
    X, X, 10, 11, 12, 269, X,
  ]);
  t.deepEqual([...b.promptLengths], [2, 3, 2, 3]);
  t.deepEqual([...b.lengths], [5, 5, 4, 7]);
  t.true(b.inputIds instanceof Int32Array && b.labels instanceof Int32Array && b.attentionMask instanceof Int32Array);
  const b8 = collatePairs(examples, 0, 4);
  t.is(b8.T, 8);
  t.deepEqual([...b8.labels.subarray(24, 32)], [X, X, 10, 11, 12, 269, X, X]);
});

test('batchPairs groups examples; last batch smaller unless dropLast; KTO batches', async (t) => {
  const ex = range(5).map((i) => ({ prompt_ids: [1 + i], chosen_ids: [2], rejected_ids: [3, 4] }));
  const sizes = (await collect(batchPairs(ex, { batchSize: 2, padTokenId: 0 }))).map((b) => [b.size, b.T, b.inputIds.length]);
  t.deepEqual(sizes, [[2, 3, 12], [2, 3, 12], [1, 3, 6]]);
  t.is((await collect(batchPairs(ex, { batchSize: 2, padTokenId: 0, dropLast: true }))).length, 2);
  const un = [
    { prompt_ids: [1, 2], completion_ids: [3], label: true },
    { prompt_ids: [4], completion_ids: [5, 6, 7], label: false },
  ];
  const [k] = await collect(batchUnpaired(un, { batchSize: 4, padTokenId: 0 }));
  t.deepEqual([...k.inputIds], [1, 2, 3, 0, 4, 5, 6, 7]);
  t.deepEqual([...k.labels], [-100, 3, -100, -100, 5, 6, 7, -100]);
  t.deepEqual([...k.labelsKto], [1, 0]);
  await t.throwsAsync(collect(batchPairs(un, { batchSize: 2, padTokenId: 0 })), { message: /Expected preference examples/ });
  await t.throwsAsync(collect(batchPairs(ex, { batchSize: 0, padTokenId: 0 })), { message: 'Expected an integer >= 1 for batchSize but received 0' });
});

test('end to end: JSONL -> tokenize -> shuffle -> batches', async (t) => {
  const tok = await Tokenizer.fromDir(join(ROOT, 'test', 'fixtures', 'tokenizers', 'llama3-tiny'));
  const batches = await collect(batchPairs(
    shuffleBuffer(tokenizeExamples(readRecords(join(ROOT, 'test', 'fixtures', 'data', 'conversational.jsonl')), tok), { bufferSize: 4, seed: 1 }),
    { batchSize: 8, padTokenId: tok.padTokenId! },
  ));
  t.is(batches.length, 1);
  const b = batches[0];
  t.is(b.size, 2);
  // every row ends with its completion; the completion tokens are exactly the labelled ones
  for (let r = 0; r < 4; r++) {
    const ex = b.examples[r % 2];
    const completion = r < 2 ? ex.chosen_ids : ex.rejected_ids;
    const labelled = [...b.labels.subarray(r * b.T, (r + 1) * b.T)].filter((x) => x !== IGNORE_INDEX);
    t.deepEqual(labelled, completion);
    t.is(b.lengths[r], ex.prompt_ids.length + completion.length);
  }
});

test.serial('readJsonl streams a 200k-line file with flat memory and stops reading when the consumer stops', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tdpo-big-'));
  const p = join(dir, 'big.jsonl');
  const ws = createWriteStream(p);
  const pad = 'x'.repeat(400);
  for (let i = 0; i < 200_000; i++) {
    if (!ws.write(`{"prompt": "p${i} ${pad}", "chosen": "c${i}", "rejected": "r${i}"}\n`)) await once(ws, 'drain');
  }
  ws.end();
  await once(ws, 'finish');
  const size = statSync(p).size;
  t.true(size > 80e6, `file size ${size}`);
  let n = 0;
  let rssStart = 0;
  let rssMax = 0;
  for await (const r of readJsonl(p)) {
    n++;
    if ((r.value as { chosen: string }).chosen !== `c${n - 1}`) t.fail(`line ${r.line}`);
    if (n === 20_000) rssStart = process.memoryUsage().rss;
    if (n % 10000 === 0) rssMax = Math.max(rssMax, process.memoryUsage().rss);
  }
  t.is(n, 200_000);
  const growth = (rssMax - rssStart) / 1e6;
  t.log(`file ${(size / 1e6).toFixed(0)} MB, RSS growth from line 20k to the end: ${growth.toFixed(1)} MB`);
  // loading the file at once would grow RSS by at least its size; streaming stays within GC / allocator slack
  t.true(growth < 0.5 * size / 1e6, `RSS grew ${growth.toFixed(1)} MB for an ${(size / 1e6).toFixed(0)} MB file`);
  // early stop: taking 3 records and leaving returns promptly and closes the file
  const gen = readJsonl(p);
  const first: number[] = [];
  for await (const r of gen) {
    first.push(r.line);
    if (first.length === 3) break;
  }
  t.deepEqual(first, [1, 2, 3]);
  t.deepEqual(await gen.next(), { done: true, value: undefined });
});
