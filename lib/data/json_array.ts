// A .json file holding one top-level array of records. Unlike JSON Lines this is parsed whole (memory grows with
// the file): fine for small data sets; use JSON Lines or Parquet for large ones.

import { readFile } from 'node:fs/promises';
import { jsonErrorLocation } from '../tokenizer';
import { DataError, SourceRecord } from './formats';

/** Yields {file, line: element number (1-based), unit: 'row', value} for each element of the array. */
export async function* readJsonArray(path: string): AsyncGenerator<SourceRecord> {
  let text: string;
  try {
    const bytes = await readFile(path);
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new DataError(path, code ? `cannot read file (${code})` : 'invalid UTF-8');
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new DataError(path, `malformed JSON: ${jsonErrorLocation(text, e)}`);
  }
  if (!Array.isArray(value)) throw new DataError(path, `Expected a top-level array of records but received ${typeof value}`);
  for (let i = 0; i < value.length; i++) yield { file: path, line: i + 1, unit: 'row', value: value[i] };
}
