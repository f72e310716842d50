// Persistent cache of reference-model log-probabilities, keyed by the content of (prompt, completion).
//
// The reference model is frozen, so log pi_ref(completion | prompt) never changes for a given model: it is computed
// once and stored. On disk (a directory):
//   meta.json    {format, version, referenceId, created, recordBytes}; written last on creation, never changed after
//   entries.bin  16-byte header, then append-only fixed-size records (RECORD_BYTES each):
//                  [0, 32)  sha256 digest of the sequence key
//                  [32, 40) float64 LE  logp  (summed log-prob of the completion tokens)
//                  [40, 44) uint32 LE   count (number of completion tokens)
//                  [44, 48) uint32 LE   CRC-32 (IEEE) of bytes [0, 44)
//   index.json   {durableRecords, updated}: number of records known fsync'ed, written atomically by flush()
//   lock         pid of the process that has the cache open (a second opener gets a clear error)
// Opening scans entries.bin, verifies every checksum, keeps every complete record and truncates a torn tail left by
// a crash in the middle of an append. A later record for the same key replaces an earlier one.

import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import * as zlib from 'node:zlib';
import { ValidationError, describe } from './validate';
import { writeFileAtomic, writeJsonAtomic, fsyncDir } from './fs_atomic';

export interface RefEntry {
  /** Summed log-prob of the completion tokens under the reference model. */
  logp: number;
  /** Number of completion tokens. */
  count: number;
}

export const REF_CACHE_FORMAT = 'torch-dpo-ref-logp-cache';
export const REF_CACHE_VERSION = 1;
export const RECORD_BYTES = 48;
const HEADER_BYTES = 16;
const MAGIC = Buffer.from('TDPOREF\0', 'latin1'); // 8 bytes, then uint32 version, uint32 record size
const KEY_RE = /^[0-9a-f]{64}$/;

// ---------------------------------------------------------------------------------------------------------------
// CRC-32 (IEEE 802.3, reflected, poly 0xEDB88820). zlib.crc32 exists from Node 20.15; the table version is the fallback.

let crcTable: Uint32Array | undefined;
function crc32Table(buf: Uint8Array): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = 0xffffffff;
  for (let i = 0; i < buf.length; i++) c = crcTable[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
const zlibCrc = (zlib as unknown as { crc32?: (d: Uint8Array) => number }).crc32;
/** CRC-32 (IEEE) of `buf`, as an unsigned 32-bit integer. */
export function crc32(buf: Uint8Array): number {
  return zlibCrc ? zlibCrc(buf) >>> 0 : crc32Table(buf);
}

// ---------------------------------------------------------------------------------------------------------------
// Keys and reference identity

function checkIdArray(ids: ArrayLike<number>, field: string): void {
  if (ids === null || typeof ids !== 'object' || typeof (ids as { length?: unknown }).length !== 'number') {
    throw new ValidationError(`Expected an array of token ids for ${field} but received ${describe(ids)}`);
  }
  for (let i = 0; i < ids.length; i++) {
    const x = ids[i];
    if (typeof x !== 'number' || !Number.isInteger(x) || x < 0 || x > 0xffffffff) {
      throw new ValidationError(`Expected integer token ids in [0, 2^32) for ${field}[${i}] but received ${describe(x)}`);
    }
  }
}

/**
 * sha256 hex of the length-prefixed encoding  "tdpo.seq.v1" | u32 len(prompt) | prompt ids (u32 LE) | u32 len(completion)
 * | completion ids (u32 LE). The lengths make the split point part of the key: moving a token from the prompt to the
 * completion gives another key (its log-prob is a different quantity).
 */
export function sequenceKey(promptIds: ArrayLike<number>, completionIds: ArrayLike<number>): string {
  checkIdArray(promptIds, 'promptIds');
  checkIdArray(completionIds, 'completionIds');
  const tag = Buffer.from('tdpo.seq.v1', 'latin1');
  const buf = Buffer.allocUnsafe(tag.length + 8 + 4 * (promptIds.length + completionIds.length));
  let o = tag.copy(buf, 0);
  o = buf.writeUInt32LE(promptIds.length, o);
  for (let i = 0; i < promptIds.length; i++) o = buf.writeUInt32LE(promptIds[i], o);
  o = buf.writeUInt32LE(completionIds.length, o);
  for (let i = 0; i < completionIds.length; i++) o = buf.writeUInt32LE(completionIds[i], o);
  return createHash('sha256').update(buf).digest('hex');
}

/**
 * sha256 over config.json and every *.safetensors file of `modelDir` (top level), in sorted name order. Each file
 * contributes its name, its byte length and its bytes (streamed), so renaming or resizing a file changes the id.
 */
export async function referenceIdentity(modelDir: string): Promise<string> {
  let names: string[];
  try {
    names = await fsp.readdir(modelDir);
  } catch (e) {
    throw new ValidationError(`Expected a readable model directory for referenceIdentity but received ${modelDir}: ${(e as Error).message}`);
  }
  const files = names.filter((n) => n === 'config.json' || n.endsWith('.safetensors'));
  files.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  if (!files.includes('config.json')) throw new ValidationError(`Expected config.json in the reference model directory ${modelDir} but it is missing`);
  if (files.length < 2) throw new ValidationError(`Expected at least one *.safetensors file in the reference model directory ${modelDir} but found none`);
  const h = createHash('sha256');
  h.update('tdpo.ref.v1\0');
  for (const name of files) {
    const file = path.join(modelDir, name);
    const st = await fsp.stat(file);
    if (!st.isFile()) throw new ValidationError(`Expected a regular file for ${file} but it is not one`);
    const head = Buffer.alloc(12);
    head.writeUInt32LE(Buffer.byteLength(name), 0);
    head.writeBigUInt64LE(BigInt(st.size), 4);
    h.update(head);
    h.update(name);
    let n = 0;
    for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) {
      h.update(chunk as Buffer);
      n += (chunk as Buffer).length;
    }
    if (n !== st.size) throw new Error(`${file} changed size while hashing (${st.size} bytes at stat, ${n} read)`);
  }
  return h.digest('hex');
}

// ---------------------------------------------------------------------------------------------------------------
// The cache

export interface RefCacheOpenReport {
  /** Complete records with a valid checksum found in entries.bin. */
  records: number;
  /** Complete records whose checksum did not match (skipped; before the last valid record). */
  corruptRecords: number;
  /** Bytes cut from the end of entries.bin (torn append or garbage after the last valid record). */
  truncatedBytes: number;
  /** durableRecords from index.json at open time. */
  indexDurableRecords: number;
  /** Wall time of open() in milliseconds. */
  openMs: number;
}

interface Meta {
  format: string;
  version: number;
  referenceId: string;
  created: string;
  recordBytes: number;
}

function isENOENT(e: unknown): boolean {
  return typeof e === 'object' && e !== null && (e as NodeJS.ErrnoException).code === 'ENOENT';
}

async function readMeta(metaPath: string): Promise<Meta> {
  let text: string;
  try {
    text = await fsp.readFile(metaPath, 'utf8');
  } catch (e) {
    throw new Error(`Cannot read reference cache metadata ${metaPath}: ${(e as Error).message}`);
  }
  let m: unknown;
  try {
    m = JSON.parse(text);
  } catch (e) {
    throw new Error(`Corrupted reference cache metadata ${metaPath}: not valid JSON (${(e as Error).message})`);
  }
  const bad = (field: string, want: string, got: unknown): never => {
    throw new Error(`Corrupted reference cache metadata ${metaPath}: expected ${want} for field "${field}" but received ${describe(got)}`);
  };
  if (typeof m !== 'object' || m === null || Array.isArray(m)) bad('(root)', 'an object', m);
  const o = m as Record<string, unknown>;
  if (o.format !== REF_CACHE_FORMAT) bad('format', `"${REF_CACHE_FORMAT}"`, o.format);
  if (o.version !== REF_CACHE_VERSION) bad('version', String(REF_CACHE_VERSION), o.version);
  if (typeof o.referenceId !== 'string' || o.referenceId.length === 0) bad('referenceId', 'a non-empty string', o.referenceId);
  if (typeof o.created !== 'string') bad('created', 'an ISO date string', o.created);
  if (o.recordBytes !== RECORD_BYTES) bad('recordBytes', String(RECORD_BYTES), o.recordBytes);
  return o as unknown as Meta;
}

/** Reads and validates `dir`/meta.json without opening (or locking) the cache, e.g. to learn its referenceId. */
export async function readRefCacheMeta(dir: string): Promise<{ referenceId: string; created: string; version: number }> {
  const m = await readMeta(path.join(path.resolve(dir), 'meta.json'));
  return { referenceId: m.referenceId, created: m.created, version: m.version };
}

function makeHeader(): Buffer {
  const b = Buffer.alloc(HEADER_BYTES);
  MAGIC.copy(b, 0);
  b.writeUInt32LE(REF_CACHE_VERSION, 8);
  b.writeUInt32LE(RECORD_BYTES, 12);
  return b;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function takeLock(lockPath: string, cacheDir: string): Promise<void> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await fsp.writeFile(lockPath, `${process.pid}\n`, { flag: 'wx' });
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new Error(`Cannot create lock file ${lockPath}: ${(e as Error).message}`);
    }
    const text = await fsp.readFile(lockPath, 'utf8').catch(() => '');
    const pid = Number.parseInt(text.trim(), 10);
    if (Number.isInteger(pid) && pid > 0 && pidAlive(pid)) {
      throw new Error(`Reference cache ${cacheDir} is already open in process ${pid}${pid === process.pid ? ' (this process)' : ''}; close it first (lock file ${lockPath})`);
    }
    await fsp.rm(lockPath, { force: true }); // stale lock from a process that died
  }
  throw new Error(`Cannot take the lock ${lockPath} for reference cache ${cacheDir}`);
}

export class RefLogpCache implements AsyncDisposable {
  readonly path: string;
  readonly referenceId: string;
  /** What open() found while scanning entries.bin. */
  readonly openReport: RefCacheOpenReport;

  private readonly index = new Map<string, number>(); // key hex -> slot
  private logps: Float64Array;
  private counts: Uint32Array;
  private fh: fsp.FileHandle | undefined;
  private fileRecords: number; // records physically in entries.bin (valid or not), i.e. the append position
  private durableRecords: number; // records covered by the last fsync + index.json
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(dir: string, referenceId: string, fh: fsp.FileHandle, fileRecords: number, durable: number, report: RefCacheOpenReport, capacity: number) {
    this.path = dir;
    this.referenceId = referenceId;
    this.fh = fh;
    this.fileRecords = fileRecords;
    this.durableRecords = durable;
    this.openReport = report;
    this.logps = new Float64Array(Math.max(1024, capacity));
    this.counts = new Uint32Array(Math.max(1024, capacity));
  }

  /** Opens (or with create: true, creates) the cache directory at `dir` for the reference model `referenceId`. */
  static async open(dir: string, opts: { referenceId: string; create?: boolean }): Promise<RefLogpCache> {
    const t0 = performance.now();
    if (typeof dir !== 'string' || dir.length === 0) throw new ValidationError(`Expected a directory path for cache path but received ${describe(dir)}`);
    if (typeof opts !== 'object' || opts === null) throw new ValidationError(`Expected an options object for RefLogpCache.open but received ${describe(opts)}`);
    if (typeof opts.referenceId !== 'string' || opts.referenceId.length === 0) {
      throw new ValidationError(`Expected a non-empty string for referenceId but received ${describe(opts.referenceId)}`);
    }
    if (opts.create !== undefined && typeof opts.create !== 'boolean') throw new ValidationError(`Expected a boolean for create but received ${describe(opts.create)}`);
    const abs = path.resolve(dir);
    const metaPath = path.join(abs, 'meta.json');
    const entriesPath = path.join(abs, 'entries.bin');
    const indexPath = path.join(abs, 'index.json');
    const lockPath = path.join(abs, 'lock');

    // The lock is taken before looking at meta.json, so two processes creating the same cache cannot both initialise it.
    const noCache = () => new Error(`No reference cache at ${abs} (${metaPath} does not exist); open it with create: true to make one`);
    try {
      if (opts.create) await fsp.mkdir(abs, { recursive: true });
      else await fsp.access(metaPath);
    } catch (e) {
      if (isENOENT(e)) throw noCache();
      throw new Error(`Cannot use ${abs} as a reference cache directory: ${(e as Error).message}`);
    }
    await takeLock(lockPath, abs);
    let metaExists = true;
    try {
      await fsp.access(metaPath);
    } catch (e) {
      metaExists = false;
      if (!isENOENT(e) || !opts.create) {
        await fsp.rm(lockPath, { force: true });
        if (!isENOENT(e)) throw new Error(`Cannot access ${metaPath}: ${(e as Error).message}`);
        throw noCache();
      }
    }
    if (!metaExists) {
      try {
        const foreign = (await fsp.readdir(abs)).filter((n) => !['entries.bin', 'index.json', 'lock'].includes(n) && !n.startsWith('.'));
        if (foreign.length > 0) {
          throw new Error(`Cannot create a reference cache in ${abs}: the directory is not empty and has no meta.json (found ${foreign.slice(0, 5).join(', ')})`);
        }
        // meta.json is written last: a crash before it leaves a directory that the next create simply re-initialises.
        await writeFileAtomic(entriesPath, makeHeader());
        await writeJsonAtomic(indexPath, { durableRecords: 0, updated: new Date().toISOString() });
        const meta: Meta = { format: REF_CACHE_FORMAT, version: REF_CACHE_VERSION, referenceId: opts.referenceId, created: new Date().toISOString(), recordBytes: RECORD_BYTES };
        await writeJsonAtomic(metaPath, meta);
      } catch (e) {
        await fsp.rm(lockPath, { force: true });
        throw e;
      }
    }

    try {
      const meta = await readMeta(metaPath);
      if (meta.referenceId !== opts.referenceId) {
        throw new Error(
          `Reference cache ${abs} was built with another reference model: it holds referenceId ${meta.referenceId} but ${opts.referenceId} was requested; use another cache path or delete this one`,
        );
      }
      let indexDurable = 0;
      try {
        const idx = JSON.parse(await fsp.readFile(indexPath, 'utf8')) as { durableRecords?: unknown };
        if (typeof idx.durableRecords !== 'number' || !Number.isInteger(idx.durableRecords) || idx.durableRecords < 0) {
          throw new Error(`expected a non-negative integer for field "durableRecords" but received ${describe(idx.durableRecords)}`);
        }
        indexDurable = idx.durableRecords;
      } catch (e) {
        if (!isENOENT(e)) throw new Error(`Corrupted reference cache index ${indexPath}: ${(e as Error).message} (delete it to rebuild it from entries.bin)`);
      }
      return await RefLogpCache.load(abs, opts.referenceId, entriesPath, indexPath, indexDurable, t0);
    } catch (e) {
      await fsp.rm(lockPath, { force: true });
      throw e;
    }
  }

  private static async load(abs: string, referenceId: string, entriesPath: string, indexPath: string, indexDurable: number, t0: number): Promise<RefLogpCache> {
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(entriesPath, 'r+');
    } catch (e) {
      if (!isENOENT(e)) throw new Error(`Cannot open ${entriesPath}: ${(e as Error).message}`);
      // meta.json exists but entries.bin is gone: start an empty log (the entries are recomputable).
      await writeFileAtomic(entriesPath, makeHeader());
      fh = await fsp.open(entriesPath, 'r+');
    }
    try {
      const size = (await fh.stat()).size;
      const header = Buffer.alloc(HEADER_BYTES);
      const { bytesRead } = await fh.read(header, 0, HEADER_BYTES, 0);
      if (bytesRead < HEADER_BYTES || !header.subarray(0, 8).equals(MAGIC)) {
        throw new Error(`Corrupted reference cache log ${entriesPath}: bad header (expected magic "TDPOREF" and version ${REF_CACHE_VERSION})`);
      }
      if (header.readUInt32LE(8) !== REF_CACHE_VERSION || header.readUInt32LE(12) !== RECORD_BYTES) {
        throw new Error(
          `Corrupted reference cache log ${entriesPath}: header says version ${header.readUInt32LE(8)}, record size ${header.readUInt32LE(12)}; expected ${REF_CACHE_VERSION}, ${RECORD_BYTES}`,
        );
      }
      const complete = Math.floor((size - HEADER_BYTES) / RECORD_BYTES);
      const report: RefCacheOpenReport = { records: 0, corruptRecords: 0, truncatedBytes: 0, indexDurableRecords: indexDurable, openMs: 0 };
      const cache = new RefLogpCache(abs, referenceId, fh, 0, 0, report, complete);
      // Scan in chunks of whole records.
      const chunkRecords = 1 << 15;
      const buf = Buffer.allocUnsafe(chunkRecords * RECORD_BYTES);
      let lastValid = -1; // record number of the last valid record
      let invalidSinceLastValid = 0;
      for (let r = 0; r < complete; r += chunkRecords) {
        const n = Math.min(chunkRecords, complete - r);
        const want = n * RECORD_BYTES;
        let got = 0;
        while (got < want) {
          const res = await fh.read(buf, got, want - got, HEADER_BYTES + r * RECORD_BYTES + got);
          if (res.bytesRead === 0) break;
          got += res.bytesRead;
        }
        if (got < want) throw new Error(`${entriesPath} shrank while it was being read (expected ${want} bytes at record ${r}, read ${got})`);
        for (let i = 0; i < n; i++) {
          const o = i * RECORD_BYTES;
          const crc = buf.readUInt32LE(o + 44);
          if (crc32(buf.subarray(o, o + 44)) !== crc) {
            invalidSinceLastValid++;
            continue;
          }
          report.corruptRecords += invalidSinceLastValid;
          invalidSinceLastValid = 0;
          lastValid = r + i;
          cache.setLocal(buf.toString('hex', o, o + 32), buf.readDoubleLE(o + 32), buf.readUInt32LE(o + 40));
        }
      }
      report.records = lastValid + 1 - report.corruptRecords;
      const keepBytes = HEADER_BYTES + (lastValid + 1) * RECORD_BYTES;
      if (keepBytes < size) {
        // Torn append (partial record) or garbage after the last valid record: cut it so appends continue cleanly.
        report.truncatedBytes = size - keepBytes;
        await fh.truncate(keepBytes);
        await fh.sync();
      }
      cache.fileRecords = lastValid + 1;
      cache.durableRecords = Math.min(indexDurable, cache.fileRecords);
      if (report.truncatedBytes > 0 || indexDurable !== cache.fileRecords) {
        // Everything now in the file has been read back and (after truncate) synced: record it as durable.
        await fh.sync();
        await writeJsonAtomic(indexPath, { durableRecords: cache.fileRecords, updated: new Date().toISOString() });
        cache.durableRecords = cache.fileRecords;
      }
      report.openMs = performance.now() - t0;
      return cache;
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  private setLocal(key: string, logp: number, count: number): void {
    let slot = this.index.get(key);
    if (slot === undefined) {
      slot = this.index.size;
      if (slot >= this.logps.length) {
        const cap = this.logps.length * 2;
        const l = new Float64Array(cap);
        l.set(this.logps);
        const c = new Uint32Array(cap);
        c.set(this.counts);
        this.logps = l;
        this.counts = c;
      }
      this.index.set(key, slot);
    }
    this.logps[slot] = logp;
    this.counts[slot] = count;
  }

  private checkOpen(what: string): void {
    if (this.closed) throw new Error(`RefLogpCache.${what}: the cache ${this.path} is closed`);
  }

  get(key: string): RefEntry | undefined {
    this.checkOpen('get');
    const slot = this.index.get(key);
    return slot === undefined ? undefined : { logp: this.logps[slot], count: this.counts[slot] };
  }

  has(key: string): boolean {
    this.checkOpen('has');
    return this.index.has(key);
  }

  /** Number of distinct keys. */
  get size(): number {
    return this.index.size;
  }

  /** Records appended but not yet made durable by flush(). */
  get pendingRecords(): number {
    return this.fileRecords - this.durableRecords;
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /**
   * Appends the entries to the log and makes them visible to get(). A key already present with a different value is
   * replaced (the later record wins on reopen too); one present with the identical value is not written again.
   * The records are durable after flush().
   */
  async putMany(entries: Array<[string, RefEntry]>): Promise<void> {
    this.checkOpen('putMany');
    if (!Array.isArray(entries)) throw new ValidationError(`Expected an array of [key, {logp, count}] for entries but received ${describe(entries)}`);
    const rows: Array<[string, number, number]> = [];
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i];
      if (!Array.isArray(e) || e.length !== 2) throw new ValidationError(`Expected a [key, {logp, count}] pair for entries[${i}] but received ${describe(e)}`);
      const [key, v] = e;
      if (typeof key !== 'string' || !KEY_RE.test(key)) throw new ValidationError(`Expected a 64-digit lowercase hex key (from sequenceKey) for entries[${i}][0] but received ${describe(key)}`);
      if (typeof v !== 'object' || v === null) throw new ValidationError(`Expected an object {logp, count} for entries[${i}][1] but received ${describe(v)}`);
      if (typeof v.logp !== 'number' || !Number.isFinite(v.logp)) throw new ValidationError(`Expected a finite number for entries[${i}][1].logp but received ${describe(v.logp)}`);
      if (typeof v.count !== 'number' || !Number.isInteger(v.count) || v.count < 0 || v.count > 0xffffffff) {
        throw new ValidationError(`Expected an integer in [0, 4294967295] for entries[${i}][1].count but received ${describe(v.count)}`);
      }
      rows.push([key, v.logp, v.count]);
    }
    await this.serial(async () => {
      // A putMany queued before close() still runs (close() waits for it); only one issued after close is refused.
      if (!this.fh) throw new Error(`RefLogpCache.putMany: the cache ${this.path} is closed`);
      const fresh: Array<[string, number, number]> = [];
      const batch = new Map<string, number>();
      for (const row of rows) {
        const slot = this.index.get(row[0]);
        if (slot !== undefined && Object.is(this.logps[slot], row[1]) && this.counts[slot] === row[2] && !batch.has(row[0])) continue;
        const prev = batch.get(row[0]);
        if (prev !== undefined) fresh[prev] = row; // same key twice in one batch: last one wins
        else {
          batch.set(row[0], fresh.length);
          fresh.push(row);
        }
      }
      if (fresh.length === 0) return;
      const buf = Buffer.alloc(fresh.length * RECORD_BYTES);
      for (let i = 0; i < fresh.length; i++) {
        const o = i * RECORD_BYTES;
        buf.write(fresh[i][0], o, 32, 'hex');
        buf.writeDoubleLE(fresh[i][1], o + 32);
        buf.writeUInt32LE(fresh[i][2], o + 40);
        buf.writeUInt32LE(crc32(buf.subarray(o, o + 44)), o + 44);
      }
      const pos = HEADER_BYTES + this.fileRecords * RECORD_BYTES;
      let written = 0;
      while (written < buf.length) {
        const res = await this.fh!.write(buf, written, buf.length - written, pos + written);
        written += res.bytesWritten;
      }
      this.fileRecords += fresh.length;
      for (const [k, l, c] of fresh) this.setLocal(k, l, c);
    });
  }

  /** fsyncs entries.bin and records the durable record count in index.json. */
  async flush(): Promise<void> {
    this.checkOpen('flush');
    await this.serial(() => this.flushNow());
  }

  private async flushNow(): Promise<void> {
    if (!this.fh || this.durableRecords === this.fileRecords) return;
    await this.fh.sync();
    const n = this.fileRecords;
    await writeJsonAtomic(path.join(this.path, 'index.json'), { durableRecords: n, updated: new Date().toISOString() });
    this.durableRecords = n;
  }

  /** Flushes, closes the log and releases the lock. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return this.queue.then(() => undefined);
    this.closed = true;
    await this.serial(async () => {
      try {
        await this.flushNow();
      } finally {
        const fh = this.fh;
        this.fh = undefined;
        await fh?.close();
        await fsp.rm(path.join(this.path, 'lock'), { force: true });
        await fsyncDir(this.path).catch(() => undefined);
      }
    });
  }

  dispose(): Promise<void> {
    return this.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
