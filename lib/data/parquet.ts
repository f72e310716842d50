// Parquet reading via hyparquet (an ES module, loaded with a dynamic import), one row group at a time so memory is
// bounded by the largest row group, not the file. Pull-based: the next row group is decoded only when the consumer
// has taken every row of the current one.

import { pathToFileURL } from 'node:url';
import type { FileMetaData } from 'hyparquet';
import { DataError, SourceRecord } from './formats';

interface AsyncBuffer {
  byteLength: number;
  slice(start: number, end?: number): ArrayBuffer | Promise<ArrayBuffer>;
}

interface Hyparquet {
  asyncBufferFromFile(path: string): Promise<AsyncBuffer>;
  parquetMetadataAsync(file: AsyncBuffer): Promise<FileMetaData>;
  parquetReadObjects(opts: { file: AsyncBuffer; metadata?: FileMetaData; columns?: string[]; rowStart?: number; rowEnd?: number }): Promise<Record<string, unknown>[]>;
}

// TypeScript compiles `import()` to `require()` under CommonJS; an ES-only package needs a real dynamic import.
const dynamicImport = new Function('specifier', 'return import(specifier)') as (s: string) => Promise<unknown>;
let hyparquet: Promise<Hyparquet> | undefined;
function loadHyparquet(): Promise<Hyparquet> {
  hyparquet ??= dynamicImport(pathToFileURL(require.resolve('hyparquet')).href) as Promise<Hyparquet>;
  return hyparquet;
}

/** BigInt (INT64 columns) -> number when exactly representable; arrays and objects converted recursively. */
function plain(v: unknown): unknown {
  if (typeof v === 'bigint') return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  if (Array.isArray(v)) return v.map(plain);
  if (ArrayBuffer.isView(v)) return Array.from(v as unknown as ArrayLike<number | bigint>, plain);
  if (v !== null && typeof v === 'object' && !(v instanceof Date)) {
    const o: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) o[k] = plain(x);
    return o;
  }
  return v;
}

export interface ParquetOptions {
  /** Columns to read (default all). */
  columns?: string[];
}

/** Number of rows and row groups, from the footer. */
export async function parquetInfo(path: string): Promise<{ rows: number; rowGroups: number[] }> {
  const hp = await loadHyparquet();
  const { metadata } = await open(hp, path);
  return { rows: Number(metadata.num_rows), rowGroups: metadata.row_groups.map((g) => Number(g.num_rows)) };
}

async function open(hp: Hyparquet, path: string): Promise<{ file: AsyncBuffer; metadata: FileMetaData }> {
  let file: AsyncBuffer;
  try {
    file = await hp.asyncBufferFromFile(path);
  } catch (e) {
    throw new DataError(path, `cannot read file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  try {
    return { file, metadata: await hp.parquetMetadataAsync(file) };
  } catch (e) {
    throw new DataError(path, `not a readable Parquet file: ${(e as Error).message}`);
  }
}

/** Yields the file's rows as plain objects (INT64 -> number), reading one row group at a time. */
export async function* readParquet(path: string, opts: ParquetOptions = {}): AsyncGenerator<Record<string, unknown>> {
  for await (const r of readParquetRecords(path, opts)) yield r.value as Record<string, unknown>;
}

/** Same rows as SourceRecords {file, line: 1-based row number, unit: 'row'} for tokenizeExamples. */
export async function* readParquetRecords(path: string, opts: ParquetOptions = {}): AsyncGenerator<SourceRecord> {
  const hp = await loadHyparquet();
  const { file, metadata } = await open(hp, path);
  let rowStart = 0;
  for (const [g, group] of metadata.row_groups.entries()) {
    const n = Number(group.num_rows);
    let rows: Record<string, unknown>[];
    try {
      rows = await hp.parquetReadObjects({ file, metadata, columns: opts.columns, rowStart, rowEnd: rowStart + n });
    } catch (e) {
      throw new DataError(`${path}: row group ${g} (rows ${rowStart + 1}..${rowStart + n})`, `cannot decode: ${(e as Error).message}`);
    }
    for (let i = 0; i < rows.length; i++) yield { file: path, line: rowStart + i + 1, unit: 'row', value: plain(rows[i]) };
    rowStart += n;
  }
}
