import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeFileAtomic, writeJsonAtomic, replaceDirAtomic, recoverDirReplace, backupDirName, checkWritableDir } from '../../lib/fs_atomic';

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'tdpo-fsatomic-'));
}

function writeTree(dir: string, files: Record<string, string>): void {
  for (const [rel, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    fs.writeFileSync(path.join(dir, rel), text);
  }
}

function readTree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string, prefix: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(path.join(d, e.name), prefix + e.name + '/');
      else out[prefix + e.name] = fs.readFileSync(path.join(d, e.name), 'utf8');
    }
  };
  walk(dir, '');
  return out;
}

test('writeFileAtomic writes, overwrites and leaves no temp file behind', async (t) => {
  const d = tmp();
  const f = path.join(d, 'a.txt');
  await writeFileAtomic(f, 'first');
  t.is(fs.readFileSync(f, 'utf8'), 'first');
  const bytes = Uint8Array.from([0, 1, 2, 255, 254]);
  await writeFileAtomic(f, bytes);
  t.deepEqual(new Uint8Array(fs.readFileSync(f)), bytes);
  t.deepEqual(fs.readdirSync(d), ['a.txt']);
});

test('writeJsonAtomic round-trips and ends with a newline', async (t) => {
  const d = tmp();
  const f = path.join(d, 'x.json');
  const v = { a: 1, b: [1.5, -2e-300, 'é'], c: { d: null } };
  await writeJsonAtomic(f, v);
  const text = fs.readFileSync(f, 'utf8');
  t.true(text.endsWith('\n'));
  t.deepEqual(JSON.parse(text), v);
  await t.throwsAsync(writeJsonAtomic(f, undefined), { message: /JSON-serialisable value for .*x\.json/ });
  t.deepEqual(JSON.parse(fs.readFileSync(f, 'utf8')), v, 'a failed write leaves the old content');
});

test('writeFileAtomic into a missing directory fails naming the file', async (t) => {
  const d = tmp();
  const f = path.join(d, 'no', 'such', 'dir', 'f.txt');
  await t.throwsAsync(writeFileAtomic(f, 'x'), { message: new RegExp(`Could not write ${f.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}`) });
  t.deepEqual(fs.readdirSync(d), []);
});

test('replaceDirAtomic swaps in the new directory and removes old, tmp and backup', async (t) => {
  const d = tmp();
  const final = path.join(d, 'ckpt');
  const next = path.join(d, 'ckpt.tmp');
  writeTree(final, { 'model.bin': 'old', 'sub/state.json': '{"step":1}', 'only-old.txt': 'gone' });
  writeTree(next, { 'model.bin': 'new', 'sub/state.json': '{"step":2}' });
  await replaceDirAtomic(next, final);
  t.deepEqual(readTree(final), { 'model.bin': 'new', 'sub/state.json': '{"step":2}' });
  t.false(fs.existsSync(next));
  t.false(fs.existsSync(backupDirName(final)));
  t.deepEqual(fs.readdirSync(d), ['ckpt']);

  // And into a place where nothing existed yet.
  const fresh = path.join(d, 'fresh');
  writeTree(next, { 'a.txt': 'A' });
  await replaceDirAtomic(next, fresh);
  t.deepEqual(readTree(fresh), { 'a.txt': 'A' });
});

test('a crash between the two renames is recovered: the previous directory comes back', async (t) => {
  const d = tmp();
  const final = path.join(d, 'ckpt');
  // State after "rename final -> backup" and before "rename tmp -> final".
  writeTree(backupDirName(final), { 'model.bin': 'old' });
  t.is(await recoverDirReplace(final), 'restored');
  t.deepEqual(readTree(final), { 'model.bin': 'old' });
  t.false(fs.existsSync(backupDirName(final)));
  t.is(await recoverDirReplace(final), 'none');
});

test('a crash after the new directory was placed removes the stale backup and keeps the new one', async (t) => {
  const d = tmp();
  const final = path.join(d, 'ckpt');
  writeTree(final, { 'model.bin': 'new' });
  writeTree(backupDirName(final), { 'model.bin': 'old' });
  t.is(await recoverDirReplace(final), 'removed-stale-backup');
  t.deepEqual(readTree(final), { 'model.bin': 'new' });
  t.false(fs.existsSync(backupDirName(final)));
});

test('replaceDirAtomic recovers a left-over backup before replacing', async (t) => {
  const d = tmp();
  const final = path.join(d, 'ckpt');
  writeTree(backupDirName(final), { 'model.bin': 'old' });
  const next = path.join(d, 'next');
  writeTree(next, { 'model.bin': 'newer' });
  await replaceDirAtomic(next, final);
  t.deepEqual(readTree(final), { 'model.bin': 'newer' });
  t.deepEqual(fs.readdirSync(d), ['ckpt']);
});

test('replaceDirAtomic with a missing or invalid source leaves the previous directory intact', async (t) => {
  const d = tmp();
  const final = path.join(d, 'ckpt');
  writeTree(final, { 'model.bin': 'old' });
  const missing = path.join(d, 'missing');
  await t.throwsAsync(replaceDirAtomic(missing, final), { message: new RegExp(`new directory ${missing}.*cannot be read`) });
  fs.writeFileSync(path.join(d, 'file'), 'x');
  await t.throwsAsync(replaceDirAtomic(path.join(d, 'file'), final), { message: /Expected a directory for tmpDir/ });
  await t.throwsAsync(replaceDirAtomic(final, final), { message: /different from finalDir/ });
  await t.throwsAsync(replaceDirAtomic(final, path.join(final, 'inner')), { message: /not nested/ });
  t.deepEqual(readTree(final), { 'model.bin': 'old' });
});

test('checkWritableDir creates nested directories and names the dir and field when it cannot', async (t) => {
  const d = tmp();
  const nested = path.join(d, 'a', 'b', 'c');
  t.is(await checkWritableDir(nested, 'outputDir'), nested);
  t.true(fs.statSync(nested).isDirectory());
  t.deepEqual(fs.readdirSync(nested), [], 'the probe file is removed');
  const file = path.join(d, 'plain');
  fs.writeFileSync(file, 'x');
  await t.throwsAsync(checkWritableDir(file, 'outputDir'), { message: new RegExp(`for outputDir but received ${file}`) });
  const under = path.join(file, 'sub');
  await t.throwsAsync(checkWritableDir(under, 'checkpointDir'), { message: new RegExp(`Expected a directory that can be created for checkpointDir but received ${under}`) });
  await t.throwsAsync(checkWritableDir('', 'outputDir'), { message: /Expected a directory path for outputDir but received an empty string/ });
});
