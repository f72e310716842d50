// Parquet reading through hyparquet, on files written by the fixture writer in test/fixtures/data/parquet_writer.ts
// (no Parquet writer is installed; pyarrow is absent). The rows read back must equal the rows written, and the
// tokenized examples must equal those of the same records read from JSONL.
import test from 'ava';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tokenizer } from '../../lib/tokenizer';
import { TokenizedExample, parquetInfo, readParquet, readParquetRecords, readRecords, tokenizeExamples } from '../../lib/data';
import { writeParquet } from '../fixtures/data/parquet_writer';

const ROOT = join(__dirname, '..', '..', '..');
const TOK = join(ROOT, 'test', 'fixtures', 'tokenizers');
const DATA = join(ROOT, 'test', 'fixtures', 'data');
const dir = mkdtempSync(join(tmpdir(), 'tdpo-pq-'));

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

function jsonlRows(path: string): Record<string, unknown>[] {
  return readFileSync(path, 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
}

test('standard rows: read back exactly, row group by row group', async (t) => {
  const rows = Array.from({ length: 7 }, (_, i) => ({ prompt: `hello ${i} é`, chosen: ` world ${i}`, rejected: ` the ${i}\t😀` }));
  const p = join(dir, 'standard.parquet');
  writeParquet(p, [{ name: 'prompt', kind: 'string' }, { name: 'chosen', kind: 'string' }, { name: 'rejected', kind: 'string' }], rows, 3);
  t.deepEqual(await parquetInfo(p), { rows: 7, rowGroups: [3, 3, 1] });
  t.deepEqual(await collect(readParquet(p)), rows);
  const recs = await collect(readParquetRecords(p));
  t.deepEqual(recs.map((r) => [r.line, r.unit]), rows.map((_, i) => [i + 1, 'row']));
});

test('conversational (list of message structs) and tokenized (int64 lists) rows tokenize like their JSONL twins', async (t) => {
  const llama = await Tokenizer.fromDir(join(TOK, 'llama3-tiny'));
  const conv = jsonlRows(join(DATA, 'conversational.jsonl'));
  const p = join(dir, 'conv.parquet');
  const msg = (name: string) => ({ name, kind: 'messages' as const, fields: ['role', 'content'] });
  writeParquet(p, [msg('prompt'), msg('chosen'), msg('rejected')], conv, 1);
  t.deepEqual(await collect(readParquet(p)), conv);
  const fromPq = await collect(tokenizeExamples(readRecords(p), llama));
  const fromJsonl = await collect(tokenizeExamples(readRecords(join(DATA, 'conversational.jsonl')), llama));
  t.deepEqual(fromPq, fromJsonl);

  const gpt2 = await Tokenizer.fromDir(join(TOK, 'gpt2-tiny'));
  const tokRows = jsonlRows(join(DATA, 'tokenized.jsonl'));
  const q = join(dir, 'tok.parquet');
  writeParquet(q, [{ name: 'prompt_ids', kind: 'int64list' }, { name: 'chosen_ids', kind: 'int64list' }, { name: 'rejected_ids', kind: 'int64list' }], tokRows, 2);
  const ex: TokenizedExample[] = await collect(tokenizeExamples(readRecords(q), gpt2, { maxPromptLength: 4 }));
  t.deepEqual(ex, [{ prompt_ids: [3, 4, 5, 6], chosen_ids: [10, 11, 12, 269], rejected_ids: [20, 21, 269] }]);

  const un = [{ prompt: 'hello', completion: ' world', label: true }, { prompt: 'hello', completion: ' the', label: false }];
  const u = join(dir, 'kto.parquet');
  writeParquet(u, [{ name: 'prompt', kind: 'string' }, { name: 'completion', kind: 'string' }, { name: 'label', kind: 'bool' }], un, 8);
  t.deepEqual(await collect(tokenizeExamples(readRecords(u), gpt2)), [
    { prompt_ids: [259], completion_ids: [264, 269], label: true },
    { prompt_ids: [259], completion_ids: [266, 269], label: false },
  ]);
});

test('errors name the Parquet file and row', async (t) => {
  const gpt2 = await Tokenizer.fromDir(join(TOK, 'gpt2-tiny'));
  const rows = [
    { prompt: 'hello', chosen: ' world', rejected: ' the' },
    { prompt: 'hello', chosen: '', rejected: ' the' },
  ];
  const p = join(dir, 'bad.parquet');
  writeParquet(p, [{ name: 'prompt', kind: 'string' }, { name: 'chosen', kind: 'string' }, { name: 'rejected', kind: 'string' }], rows, 1);
  await t.throwsAsync(collect(tokenizeExamples(readRecords(p), gpt2)), { message: `${p}: row 2: Expected a non-empty string for chosen but received ""` });
  const notPq = join(DATA, 'standard.jsonl');
  await t.throwsAsync(collect(readParquet(notPq)), { message: /standard\.jsonl: not a readable Parquet file: / });
  await t.throwsAsync(collect(readParquet(join(dir, 'missing.parquet'))), { message: `${join(dir, 'missing.parquet')}: cannot read file (ENOENT)` });
});

test('row groups are decoded lazily: rows before a corrupt row group come out first', async (t) => {
  const rows = Array.from({ length: 4 }, (_, i) => ({ prompt: `p${i}`, chosen: `c${i}`, rejected: `r${i}` }));
  const p = join(dir, 'corrupt.parquet');
  writeParquet(p, [{ name: 'prompt', kind: 'string' }, { name: 'chosen', kind: 'string' }, { name: 'rejected', kind: 'string' }], rows, 2);
  // Overwrite the first page header of row group 2: it starts right after group 1's last value "r1".
  const buf = readFileSync(p);
  const start = buf.indexOf(Buffer.from('r1')) + 2;
  buf.fill(0xff, start, start + 24);
  writeFileSync(p, buf);
  const got: unknown[] = [];
  const err = await t.throwsAsync(async () => {
    for await (const r of readParquet(p)) got.push(r);
  });
  t.deepEqual(got, rows.slice(0, 2));
  t.regex(err?.message ?? '', /corrupt\.parquet: row group 1 \(rows 3\.\.4\): cannot decode: /);
});
