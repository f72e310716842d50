import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { RefLogpCache, sequenceKey, referenceIdentity, crc32, RECORD_BYTES, RefEntry } from '../../lib/ref_cache';

const REF = 'a'.repeat(64);
const HEADER = 16;

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'tdpo-refcache-'));
}

/** Deterministic awkward float64 values: signs, tiny, huge, denormal, -0, long mantissas. */
function valueFor(i: number): RefEntry {
  const specials = [-0, 0, -5e-324, -Number.MAX_VALUE, -Math.PI * 1e10, -0.1 - 0.2, -1 / 3, -123.45678901234567];
  const logp = i < specials.length ? specials[i] : -Math.sqrt(i) * 1.0000000000000002 - i / 7;
  const count = i === 0 ? 4294967295 : (i * 2654435761) % 4096;
  return { logp, count };
}

function keyFor(i: number): string {
  return sequenceKey([1, 2, i & 0xffff], [i >>> 16, i, 7]);
}

function sameEntry(a: RefEntry | undefined, b: RefEntry): boolean {
  return a !== undefined && Object.is(a.logp, b.logp) && a.count === b.count;
}

async function filled(dir: string, n: number): Promise<void> {
  const c = await RefLogpCache.open(dir, { referenceId: REF, create: true });
  await c.putMany(Array.from({ length: n }, (_, i) => [keyFor(i), valueFor(i)] as [string, RefEntry]));
  await c.close();
}

test('crc32 gives the standard check value', (t) => {
  t.is(crc32(Buffer.from('123456789', 'latin1')), 0xcbf43926);
  t.is(crc32(Buffer.alloc(0)), 0);
});

test('sequenceKey equals sha256 of the documented length-prefixed encoding', (t) => {
  const prompt = [5, 0, 4294967295];
  const completion = [17, 3];
  // Independent construction of the encoding with DataView.
  const tag = new TextEncoder().encode('tdpo.seq.v1');
  const bytes = new Uint8Array(tag.length + 4 * (2 + prompt.length + completion.length));
  bytes.set(tag);
  const dv = new DataView(bytes.buffer);
  let o = tag.length;
  dv.setUint32(o, prompt.length, true); o += 4;
  for (const x of prompt) { dv.setUint32(o, x, true); o += 4; }
  dv.setUint32(o, completion.length, true); o += 4;
  for (const x of completion) { dv.setUint32(o, x, true); o += 4; }
  const want = createHash('sha256').update(bytes).digest('hex');
  t.is(sequenceKey(prompt, completion), want);
  t.is(sequenceKey(Int32Array.from(prompt.slice(0, 2)), [17]), sequenceKey([5, 0], Uint32Array.from([17])), 'typed arrays and arrays agree');
});

test('sequenceKey is stable and depends on the prompt/completion split', (t) => {
  const a = sequenceKey([1, 2, 3], [4, 5]);
  t.is(a, sequenceKey([1, 2, 3], [4, 5]));
  t.regex(a, /^[0-9a-f]{64}$/);
  t.not(a, sequenceKey([1, 2], [3, 4, 5]));
  t.not(a, sequenceKey([1, 2, 3, 4, 5], []));
  t.not(sequenceKey([], [1]), sequenceKey([1], []));
  t.not(a, sequenceKey([1, 2, 3], [4, 6]));
  t.throws(() => sequenceKey([1, -1], [2]), { message: /Expected integer token ids in \[0, 2\^32\) for promptIds\[1\] but received -1/ });
  t.throws(() => sequenceKey([1], [2.5]), { message: /for completionIds\[0\] but received 2.5/ });
});

test('put/get round trip keeps float64 values exactly, before flush and after reopen', async (t) => {
  const dir = path.join(tmp(), 'cache');
  const n = 50;
  const c = await RefLogpCache.open(dir, { referenceId: REF, create: true });
  t.is(c.size, 0);
  await c.putMany(Array.from({ length: n }, (_, i) => [keyFor(i), valueFor(i)] as [string, RefEntry]));
  t.is(c.size, n);
  for (let i = 0; i < n; i++) t.true(sameEntry(c.get(keyFor(i)), valueFor(i)), `entry ${i} before flush`);
  t.true(Object.is(c.get(keyFor(0))!.logp, -0));
  t.is(c.pendingRecords, n);
  await c.flush();
  t.is(c.pendingRecords, 0);
  t.deepEqual(JSON.parse(fs.readFileSync(path.join(dir, 'index.json'), 'utf8')).durableRecords, n);
  t.false(c.has(sequenceKey([9], [9])));
  t.is(c.get(sequenceKey([9], [9])), undefined);
  await c.close();
  await c.close(); // idempotent
  t.throws(() => c.get(keyFor(0)), { message: /is closed/ });
  t.is(fs.statSync(path.join(dir, 'entries.bin')).size, HEADER + n * RECORD_BYTES);

  const r = await RefLogpCache.open(dir, { referenceId: REF });
  t.is(r.size, n);
  for (let i = 0; i < n; i++) t.true(sameEntry(r.get(keyFor(i)), valueFor(i)), `entry ${i} after reopen`);
  t.deepEqual({ ...r.openReport, openMs: 0 }, { records: n, corruptRecords: 0, truncatedBytes: 0, indexDurableRecords: n, openMs: 0 });
  await r.close();
});

test('records on disk have the documented layout', async (t) => {
  const dir = path.join(tmp(), 'cache');
  await filled(dir, 3);
  const buf = fs.readFileSync(path.join(dir, 'entries.bin'));
  t.is(buf.subarray(0, 7).toString('latin1'), 'TDPOREF');
  for (let i = 0; i < 3; i++) {
    const rec = buf.subarray(HEADER + i * RECORD_BYTES, HEADER + (i + 1) * RECORD_BYTES);
    t.is(rec.subarray(0, 32).toString('hex'), keyFor(i));
    t.true(Object.is(rec.readDoubleLE(32), valueFor(i).logp));
    t.is(rec.readUInt32LE(40), valueFor(i).count);
    t.is(rec.readUInt32LE(44), crc32(rec.subarray(0, 44)));
  }
});

test('replacing a key: later value wins, identical re-puts are not appended', async (t) => {
  const dir = path.join(tmp(), 'cache');
  await filled(dir, 4);
  const c = await RefLogpCache.open(dir, { referenceId: REF });
  await c.putMany([[keyFor(1), valueFor(1)], [keyFor(2), valueFor(2)]]);
  t.is(c.pendingRecords, 0, 'identical values are not written again');
  await c.putMany([[keyFor(1), { logp: -9.5, count: 3 }], [keyFor(1), { logp: -10.25, count: 4 }]]);
  t.is(c.pendingRecords, 1, 'one record for the key repeated in a batch');
  t.deepEqual(c.get(keyFor(1)), { logp: -10.25, count: 4 });
  await c.close();
  const r = await RefLogpCache.open(dir, { referenceId: REF });
  t.is(r.size, 4);
  t.deepEqual(r.get(keyFor(1)), { logp: -10.25, count: 4 });
  await r.close();
});

test('a torn append (file cut mid-record) keeps every complete record and appending continues', async (t) => {
  const dir = path.join(tmp(), 'cache');
  await filled(dir, 10);
  const entries = path.join(dir, 'entries.bin');
  const full = fs.statSync(entries).size;
  fs.truncateSync(entries, full - 20); // the 10th record loses its last 20 bytes
  const c = await RefLogpCache.open(dir, { referenceId: REF });
  t.is(c.size, 9);
  t.is(c.openReport.truncatedBytes, RECORD_BYTES - 20);
  for (let i = 0; i < 9; i++) t.true(sameEntry(c.get(keyFor(i)), valueFor(i)));
  t.false(c.has(keyFor(9)));
  t.is(fs.statSync(entries).size, HEADER + 9 * RECORD_BYTES);
  await c.putMany([[keyFor(9), valueFor(9)], [keyFor(10), valueFor(10)]]);
  await c.close();
  const r = await RefLogpCache.open(dir, { referenceId: REF });
  t.is(r.size, 11);
  for (let i = 0; i < 11; i++) t.true(sameEntry(r.get(keyFor(i)), valueFor(i)), `entry ${i}`);
  t.is(r.openReport.truncatedBytes, 0);
  await r.close();
});

test('garbage appended after the last record is cut off; a corrupted middle record is skipped', async (t) => {
  const dir = path.join(tmp(), 'cache');
  await filled(dir, 10);
  const entries = path.join(dir, 'entries.bin');
  fs.appendFileSync(entries, randomBytes(RECORD_BYTES * 2 + 13));
  // Flip one bit in the logp of record 3.
  const buf = fs.readFileSync(entries);
  buf[HEADER + 3 * RECORD_BYTES + 35] ^= 0x10;
  fs.writeFileSync(entries, buf);
  const c = await RefLogpCache.open(dir, { referenceId: REF });
  t.is(c.openReport.truncatedBytes, RECORD_BYTES * 2 + 13);
  t.is(c.openReport.corruptRecords, 1);
  t.is(c.size, 9);
  t.false(c.has(keyFor(3)), 'the record with the wrong checksum is not trusted');
  for (const i of [0, 1, 2, 4, 5, 6, 7, 8, 9]) t.true(sameEntry(c.get(keyFor(i)), valueFor(i)), `entry ${i}`);
  await c.close();
});

test('a process that died with the cache open leaves a stale lock that the next open takes over', async (t) => {
  const dir = path.join(tmp(), 'cache');
  await filled(dir, 5);
  const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
  fs.writeFileSync(path.join(dir, 'lock'), `${dead}\n`);
  // The crashed process had appended half a record after its last flush.
  fs.appendFileSync(path.join(dir, 'entries.bin'), Buffer.alloc(30, 7));
  const c = await RefLogpCache.open(dir, { referenceId: REF });
  t.is(c.size, 5);
  t.is(c.openReport.truncatedBytes, 30);
  await c.close();
  t.false(fs.existsSync(path.join(dir, 'lock')));
});

test('a second open of a cache in use is refused', async (t) => {
  const dir = path.join(tmp(), 'cache');
  const c = await RefLogpCache.open(dir, { referenceId: REF, create: true });
  await t.throwsAsync(RefLogpCache.open(dir, { referenceId: REF }), { message: new RegExp(`${dir}.*already open in process ${process.pid}`) });
  await c.close();
  const again = await RefLogpCache.open(dir, { referenceId: REF });
  await again.close();
  t.pass();
});

test('await using closes the cache', async (t) => {
  const dir = path.join(tmp(), 'cache');
  {
    await using c = await RefLogpCache.open(dir, { referenceId: REF, create: true });
    await c.putMany([[keyFor(1), valueFor(1)]]);
    t.true(fs.existsSync(path.join(dir, 'lock')));
  }
  t.false(fs.existsSync(path.join(dir, 'lock')));
  const r = await RefLogpCache.open(dir, { referenceId: REF });
  t.true(sameEntry(r.get(keyFor(1)), valueFor(1)));
  await r.dispose();
  await r[Symbol.asyncDispose]();
});

test('a cache built for another reference model is refused, naming both ids and the path', async (t) => {
  const dir = path.join(tmp(), 'cache');
  await filled(dir, 2);
  const other = 'b'.repeat(64);
  const err = await t.throwsAsync(RefLogpCache.open(dir, { referenceId: other, create: true }));
  t.true(err!.message.includes('built with another reference model'));
  t.true(err!.message.includes(REF));
  t.true(err!.message.includes(other));
  t.true(err!.message.includes(dir));
  t.false(fs.existsSync(path.join(dir, 'lock')), 'a refused open does not leave the lock behind');
});

test('missing or corrupted meta.json gives an error naming the file', async (t) => {
  const base = tmp();
  const missing = path.join(base, 'none');
  await t.throwsAsync(RefLogpCache.open(missing, { referenceId: REF }), { message: /No reference cache at .*meta\.json does not exist.*create: true/ });
  const dir = path.join(base, 'cache');
  await filled(dir, 2);
  const meta = path.join(dir, 'meta.json');
  const good = fs.readFileSync(meta, 'utf8');
  fs.writeFileSync(meta, good.slice(0, good.length / 2));
  await t.throwsAsync(RefLogpCache.open(dir, { referenceId: REF }), { message: new RegExp(`Corrupted reference cache metadata ${meta}: not valid JSON`) });
  fs.writeFileSync(meta, JSON.stringify({ ...JSON.parse(good), referenceId: 42 }));
  await t.throwsAsync(RefLogpCache.open(dir, { referenceId: REF }), { message: new RegExp(`${meta}: expected a non-empty string for field "referenceId" but received 42`) });
  fs.writeFileSync(meta, good);
  const hdr = path.join(dir, 'entries.bin');
  const b = fs.readFileSync(hdr);
  b[0] = 0x58;
  fs.writeFileSync(hdr, b);
  await t.throwsAsync(RefLogpCache.open(dir, { referenceId: REF }), { message: new RegExp(`Corrupted reference cache log ${hdr}: bad header`) });
});

test('creating a cache in a non-empty foreign directory is refused', async (t) => {
  const dir = tmp();
  fs.writeFileSync(path.join(dir, 'model.safetensors'), 'x');
  await t.throwsAsync(RefLogpCache.open(dir, { referenceId: REF, create: true }), { message: /not empty and has no meta\.json \(found model\.safetensors\)/ });
});

test('putMany validates keys and values', async (t) => {
  const dir = path.join(tmp(), 'cache');
  const c = await RefLogpCache.open(dir, { referenceId: REF, create: true });
  await t.throwsAsync(c.putMany([['xyz', { logp: -1, count: 1 }]]), { message: /64-digit lowercase hex key .* for entries\[0\]\[0\] but received "xyz"/ });
  await t.throwsAsync(c.putMany([[keyFor(1), { logp: NaN, count: 1 }]]), { message: /finite number for entries\[0\]\[1\]\.logp but received NaN/ });
  await t.throwsAsync(c.putMany([[keyFor(1), { logp: -1, count: 1 }], [keyFor(2), { logp: -1, count: -2 }]]), { message: /entries\[1\]\[1\]\.count but received -2/ });
  t.is(c.size, 0, 'a rejected batch writes nothing');
  await t.throwsAsync(RefLogpCache.open(dir, { referenceId: '' }), { message: /non-empty string for referenceId/ });
  await c.close();
  await t.throwsAsync(c.putMany([[keyFor(1), { logp: -1, count: 1 }]]), { message: /is closed/ });
});

test('referenceIdentity hashes config.json and *.safetensors in name order, independently recomputed', async (t) => {
  const dir = tmp();
  const files: Record<string, Buffer> = {
    'config.json': Buffer.from('{"hidden_size":8}'),
    'model-00002-of-00002.safetensors': randomBytes(3 << 20), // larger than one stream chunk
    'model-00001-of-00002.safetensors': randomBytes(1000),
  };
  for (const [n, b] of Object.entries(files)) fs.writeFileSync(path.join(dir, n), b);
  fs.writeFileSync(path.join(dir, 'README.md'), 'not hashed');
  const id = await referenceIdentity(dir);
  const h = createHash('sha256');
  h.update(Buffer.from('tdpo.ref.v1\0', 'latin1'));
  for (const n of ['config.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']) {
    const len = Buffer.alloc(12);
    len.writeUInt32LE(n.length, 0);
    len.writeUInt32LE(files[n].length, 4); // < 2^32: the high half of the u64 stays 0
    h.update(len).update(Buffer.from(n, 'latin1')).update(files[n]);
  }
  t.is(id, h.digest('hex'));
  fs.writeFileSync(path.join(dir, 'README.md'), 'changed: still not hashed');
  t.is(await referenceIdentity(dir), id);
  const w = Buffer.from(files['model-00002-of-00002.safetensors']);
  w[w.length - 1] ^= 1;
  fs.writeFileSync(path.join(dir, 'model-00002-of-00002.safetensors'), w);
  t.not(await referenceIdentity(dir), id, 'one flipped bit in the weights changes the id');
  fs.rmSync(path.join(dir, 'config.json'));
  await t.throwsAsync(referenceIdentity(dir), { message: new RegExp(`config\\.json in the reference model directory ${dir}`) });
  await t.throwsAsync(referenceIdentity(path.join(dir, 'nope')), { message: /readable model directory/ });
});

test('100k entries: write, reopen and look up every one (timed)', async (t) => {
  const dir = path.join(tmp(), 'cache');
  const n = 100_000;
  const keys = Array.from({ length: n }, (_, i) => keyFor(i));
  const c = await RefLogpCache.open(dir, { referenceId: REF, create: true });
  const t0 = performance.now();
  for (let s = 0; s < n; s += 10_000) await c.putMany(keys.slice(s, s + 10_000).map((k, j) => [k, valueFor(s + j)] as [string, RefEntry]));
  await c.flush();
  const writeMs = performance.now() - t0;
  await c.close();
  const t1 = performance.now();
  const r = await RefLogpCache.open(dir, { referenceId: REF });
  const openMs = performance.now() - t1;
  t.is(r.size, n);
  let ok = 0;
  const t2 = performance.now();
  for (let i = 0; i < n; i++) if (sameEntry(r.get(keys[i]), valueFor(i))) ok++;
  const getMs = performance.now() - t2;
  t.is(ok, n);
  await r.close();
  const msg = `ref cache 100k: putMany+flush ${writeMs.toFixed(0)} ms, open ${openMs.toFixed(0)} ms (scan ${r.openReport.openMs.toFixed(0)} ms), 100k gets ${getMs.toFixed(0)} ms, file ${fs.statSync(path.join(dir, 'entries.bin')).size} bytes`;
  t.log(msg);
  console.log(msg);
  t.true(openMs < 10_000, `open took ${openMs} ms`);
});

test('a putMany issued before close() is written; close waits for it', async (t) => {
  const dir = path.join(tmp(), 'cache');
  const c = await RefLogpCache.open(dir, { referenceId: REF, create: true });
  const pending = c.putMany(Array.from({ length: 1000 }, (_, i) => [keyFor(i), valueFor(i)] as [string, RefEntry]));
  await c.close();
  await pending;
  const r = await RefLogpCache.open(dir, { referenceId: REF });
  t.is(r.size, 1000);
  t.true(sameEntry(r.get(keyFor(999)), valueFor(999)));
  t.is(r.openReport.indexDurableRecords, 1000, 'close() flushed and recorded them as durable');
  await r.close();
});

test('two creators racing on one path: one gets the cache, the other a clear "already open" error', async (t) => {
  const dir = path.join(tmp(), 'cache');
  const results = await Promise.allSettled([RefLogpCache.open(dir, { referenceId: REF, create: true }), RefLogpCache.open(dir, { referenceId: REF, create: true })]);
  const ok = results.filter((r): r is PromiseFulfilledResult<RefLogpCache> => r.status === 'fulfilled');
  const bad = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  t.is(ok.length, 1);
  t.is(bad.length, 1);
  t.regex(String(bad[0].reason.message), /already open in process/);
  await ok[0].value.putMany([[keyFor(1), valueFor(1)]]);
  await ok[0].value.close();
  const again = await RefLogpCache.open(dir, { referenceId: REF, create: true });
  t.is(again.size, 1, 'a later create: true opens the existing cache and does not re-initialise it');
  await again.close();
});
