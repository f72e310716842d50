// Preference-data pipeline: read (JSONL / Parquet) -> tokenize + truncate -> shuffle / split -> batch.
//
//   const tok = await Tokenizer.fromDir(modelDir);
//   const examples = tokenizeExamples(readRecords('train.jsonl'), tok, { maxLength: 1024, maxPromptLength: 512 });
//   for await (const batch of batchPairs(shuffleBuffer(examples, { bufferSize: 10000, seed: 1 }),
//                                         { batchSize: 8, padTokenId: tok.padTokenId })) { ... }

import { open } from 'node:fs/promises';
import { extname } from 'node:path';
import type { SourceRecord } from './formats';
import { readJsonl } from './jsonl';
import { readParquetRecords } from './parquet';
import { ValidationError } from '../validate';
import { readJsonArray } from './json_array';

export * from './formats';
export * from './jsonl';
export * from './parquet';
export * from './shuffle';
export * from './tokenize';
export * from './batch';
export * from './json_array';
export * from './tokenize_parallel';

/**
 * Reads records from a file chosen by extension: .jsonl / .ndjson (JSON Lines, streamed), .parquet (streamed by
 * row group), .json (JSON Lines, or a top-level JSON array of records, which is parsed whole).
 */
export function readRecords(path: string): AsyncGenerator<SourceRecord> {
  const ext = extname(path).toLowerCase();
  if (ext === '.jsonl' || ext === '.ndjson') return readJsonl(path);
  if (ext === '.parquet') return readParquetRecords(path);
  if (ext === '.json') return readJsonOrJsonl(path);
  throw new ValidationError(`Expected a .jsonl, .ndjson, .json or .parquet file for path but received ${JSON.stringify(path)}`);
}

async function* readJsonOrJsonl(path: string): AsyncGenerator<SourceRecord> {
  let first = '';
  try {
    const fh = await open(path, 'r');
    try {
      const buf = Buffer.alloc(4096);
      const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
      first = buf.subarray(0, bytesRead).toString('utf8').replace(/^\uFEFF/, '').trimStart();
    } finally {
      await fh.close();
    }
  } catch {
    // unreadable: let readJsonl report it with the file name
  }
  yield* first.startsWith('[') ? readJsonArray(path) : readJsonl(path);
}

/** Wraps in-memory records as SourceRecords ("<name>: row N" in errors) for tokenizeExamples. */
export function recordsFromArray(values: readonly unknown[], name = 'records'): SourceRecord[] {
  return values.map((value, i) => ({ file: name, line: i + 1, unit: 'row' as const, value }));
}
