// Streaming JSON Lines reader with bounded memory: the file is read in 64 KiB chunks and split on '\n' bytes; only
// the current chunk and one partial line are held. Pull-based: nothing is read until the consumer asks for the next
// record, and leaving the loop early closes the file.

import { createReadStream } from 'node:fs';
import { DataError, SourceRecord } from './formats';

export interface JsonlOptions {
  /** Read chunk size in bytes (default 64 KiB). */
  chunkSize?: number;
  /** Largest accepted line in bytes (default 256 MiB); a longer line is an error rather than unbounded memory. */
  maxLineBytes?: number;
}

/**
 * Yields {file, line, value} for every non-blank line (line numbers are 1-based and count blank lines).
 * Errors name `path:line`: invalid UTF-8, malformed JSON, a line longer than maxLineBytes, unreadable file.
 */
export async function* readJsonl(path: string, opts: JsonlOptions = {}): AsyncGenerator<SourceRecord> {
  const chunkSize = opts.chunkSize ?? 64 * 1024;
  const maxLineBytes = opts.maxLineBytes ?? 256 * 1024 * 1024;
  const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false });
  const stream = createReadStream(path, { highWaterMark: chunkSize });
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let lineNo = 0;

  const parse = (bytes: Uint8Array): SourceRecord | null => {
    lineNo++;
    let end = bytes.length;
    if (end > 0 && bytes[end - 1] === 13) end--; // CRLF
    const body = bytes.subarray(0, end);
    let text: string;
    try {
      text = decoder.decode(body);
    } catch {
      throw new DataError(`${path}:${lineNo}`, `invalid UTF-8 at byte ${firstInvalidUtf8(body)} of the line`);
    }
    if (lineNo === 1 && text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    if (text.trim().length === 0) return null;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (e) {
      throw new DataError(`${path}:${lineNo}`, `malformed JSON: ${(e as Error).message}`);
    }
    return { file: path, line: lineNo, value };
  };

  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      let start = 0;
      for (;;) {
        const nl = chunk.indexOf(10, start);
        if (nl < 0) break;
        let lineBytes: Uint8Array;
        if (pendingBytes > 0) {
          pending.push(chunk.subarray(start, nl));
          lineBytes = Buffer.concat(pending);
          pending = [];
          pendingBytes = 0;
        } else {
          lineBytes = chunk.subarray(start, nl);
        }
        start = nl + 1;
        const rec = parse(lineBytes);
        if (rec) yield rec;
      }
      if (start < chunk.length) {
        pending.push(chunk.subarray(start));
        pendingBytes += chunk.length - start;
        if (pendingBytes > maxLineBytes) {
          throw new DataError(`${path}:${lineNo + 1}`, `line longer than maxLineBytes=${maxLineBytes}`);
        }
      }
    }
  } catch (e) {
    if (e instanceof DataError) throw e;
    const err = e as NodeJS.ErrnoException;
    throw new DataError(path, `cannot read file (${err.code ?? err.message})`);
  } finally {
    stream.destroy();
  }
  if (pendingBytes > 0) {
    const rec = parse(Buffer.concat(pending));
    if (rec) yield rec;
  }
}

/** Byte offset of the first byte that does not start or continue a valid UTF-8 sequence. */
function firstInvalidUtf8(b: Uint8Array): number {
  let i = 0;
  while (i < b.length) {
    const c = b[i];
    let n = 0;
    let min = 0;
    if (c < 0x80) { i++; continue; }
    else if (c >= 0xc2 && c <= 0xdf) { n = 1; min = 0x80; }
    else if (c >= 0xe0 && c <= 0xef) { n = 2; min = 0x800; }
    else if (c >= 0xf0 && c <= 0xf4) { n = 3; min = 0x10000; }
    else return i;
    let cp = c & (0x3f >> n);
    for (let k = 1; k <= n; k++) {
      const d = b[i + k];
      if (d === undefined || (d & 0xc0) !== 0x80) return i;
      cp = (cp << 6) | (d & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += n + 1;
  }
  return i;
}
