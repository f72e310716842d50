// Crash-safe file and directory replacement.
//
// writeFileAtomic: temp file in the same directory -> write -> fsync -> rename over the target -> fsync the directory.
// A reader sees either the old bytes or the new bytes, never a mix, and after the call returns the new bytes survive
// a power loss (on file systems that honour fsync).
//
// replaceDirAtomic: for checkpoint directories. POSIX has no atomic "swap two directories", so the previous directory
// is first renamed to a backup name next to it, then the new one is renamed into place, then the backup is removed.
// A crash between the two renames leaves the backup and no final directory; the next replaceDirAtomic (or
// recoverDirReplace) puts the backup back. A crash after the second rename leaves both; the backup is then stale and
// is removed. At no point is the only complete copy deleted.

import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ValidationError } from './validate';

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function isErrno(e: unknown, code: string): boolean {
  return typeof e === 'object' && e !== null && (e as NodeJS.ErrnoException).code === code;
}

/** fsync a directory so that renames/creations inside it are durable. Some platforms refuse to open directories. */
export async function fsyncDir(dir: string): Promise<void> {
  let fh: fsp.FileHandle | undefined;
  try {
    fh = await fsp.open(dir, fs.constants.O_RDONLY);
    await fh.sync();
  } catch (e) {
    // EISDIR/EPERM/EINVAL: the OS does not support fsync on directories (e.g. Windows); nothing more can be done there.
    if (!(isErrno(e, 'EISDIR') || isErrno(e, 'EPERM') || isErrno(e, 'EINVAL') || isErrno(e, 'EBADF'))) throw e;
  } finally {
    await fh?.close();
  }
}

function tempNameFor(target: string): string {
  return path.join(path.dirname(target), `.${path.basename(target)}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
}

/** Writes `data` to `file` so that the file is either the old or the complete new content, and durable on return. */
export async function writeFileAtomic(file: string, data: string | Uint8Array): Promise<void> {
  const tmp = tempNameFor(file);
  let fh: fsp.FileHandle | undefined;
  try {
    fh = await fsp.open(tmp, 'wx', 0o644);
    await fh.writeFile(data);
    await fh.sync();
    await fh.close();
    fh = undefined;
    await fsp.rename(tmp, file);
  } catch (e) {
    await fh?.close().catch(() => undefined);
    await fsp.rm(tmp, { force: true }).catch(() => undefined);
    throw new Error(`Could not write ${file} atomically: ${errText(e)}`);
  }
  await fsyncDir(path.dirname(file));
}

/** JSON.stringify(value, null, indent) plus a trailing newline, written with writeFileAtomic. */
export async function writeJsonAtomic(file: string, value: unknown, indent = 2): Promise<void> {
  const text = JSON.stringify(value, null, indent);
  if (text === undefined) throw new ValidationError(`Expected a JSON-serialisable value for ${file} but received ${typeof value}`);
  await writeFileAtomic(file, text + '\n');
}

/** The name used for the previous directory while replaceDirAtomic swaps in a new one. */
export function backupDirName(finalDir: string): string {
  const abs = path.resolve(finalDir);
  return path.join(path.dirname(abs), `.${path.basename(abs)}.replace-backup`);
}

async function exists(p: string): Promise<boolean> {
  try {
    await fsp.lstat(p);
    return true;
  } catch (e) {
    if (isErrno(e, 'ENOENT')) return false;
    throw e;
  }
}

/**
 * Finishes a replaceDirAtomic that a crash interrupted. Returns what it did:
 * 'none' (nothing to recover), 'restored' (the backup was the only copy and is back at finalDir),
 * 'removed-stale-backup' (the new directory had already been put in place; the old backup was deleted).
 */
export async function recoverDirReplace(finalDir: string): Promise<'none' | 'restored' | 'removed-stale-backup'> {
  const abs = path.resolve(finalDir);
  const backup = backupDirName(abs);
  if (!(await exists(backup))) return 'none';
  if (await exists(abs)) {
    await fsp.rm(backup, { recursive: true, force: true });
    await fsyncDir(path.dirname(abs));
    return 'removed-stale-backup';
  }
  await fsp.rename(backup, abs);
  await fsyncDir(path.dirname(abs));
  return 'restored';
}

/** fsync every regular file and directory below `dir` (the contents must be on disk before the directory is published). */
async function fsyncTree(dir: string): Promise<void> {
  const entries = await fsp.readdir(dir, { withFileTypes: true });
  for (const ent of entries) {
    const p = path.join(dir, ent.name);
    if (ent.isDirectory()) await fsyncTree(p);
    else if (ent.isFile()) {
      const fh = await fsp.open(p, 'r');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
    }
  }
  await fsyncDir(dir);
}

/**
 * Publishes the complete directory `tmpDir` as `finalDir`. The previous `finalDir` (if any) stays intact until the new
 * one is in place. `tmpDir` must be on the same file system as `finalDir` (ideally a sibling of it).
 */
export async function replaceDirAtomic(tmpDir: string, finalDir: string): Promise<void> {
  const src = path.resolve(tmpDir);
  const dst = path.resolve(finalDir);
  if (src === dst) throw new ValidationError(`Expected tmpDir different from finalDir but received ${src} for both`);
  let st: fs.Stats;
  try {
    st = await fsp.stat(src);
  } catch (e) {
    throw new Error(`replaceDirAtomic: the new directory ${src} cannot be read: ${errText(e)}`);
  }
  if (!st.isDirectory()) throw new ValidationError(`Expected a directory for tmpDir but received ${src} (not a directory)`);
  if (dst.startsWith(src + path.sep) || src.startsWith(dst + path.sep)) {
    throw new ValidationError(`Expected tmpDir and finalDir not nested in each other but received ${src} and ${dst}`);
  }
  await recoverDirReplace(dst);
  await fsyncTree(src);
  const backup = backupDirName(dst);
  const parent = path.dirname(dst);
  await fsp.mkdir(parent, { recursive: true });
  let hadPrevious = false;
  if (await exists(dst)) {
    const dstSt = await fsp.lstat(dst);
    if (!dstSt.isDirectory()) throw new ValidationError(`Expected a directory (or nothing) at finalDir but received ${dst} (a file)`);
    await fsp.rename(dst, backup);
    hadPrevious = true;
    await fsyncDir(parent);
  }
  try {
    await fsp.rename(src, dst);
  } catch (e) {
    // Put the previous directory back so the caller is left where it started.
    if (hadPrevious) await fsp.rename(backup, dst).catch(() => undefined);
    const hint = isErrno(e, 'EXDEV') ? ' (tmpDir must be on the same file system as finalDir)' : '';
    throw new Error(`replaceDirAtomic: could not move ${src} to ${dst}${hint}: ${errText(e)}`);
  }
  await fsyncDir(parent);
  if (path.dirname(src) !== parent) await fsyncDir(path.dirname(src));
  if (hadPrevious) {
    await fsp.rm(backup, { recursive: true, force: true });
    await fsyncDir(parent);
  }
}

/** Creates `dir` if needed and proves it is writable by creating and deleting a probe file there. */
export async function checkWritableDir(dir: string, field: string): Promise<string> {
  if (typeof dir !== 'string' || dir.length === 0) {
    throw new ValidationError(`Expected a directory path for ${field} but received ${dir === '' ? 'an empty string' : typeof dir}`);
  }
  const abs = path.resolve(dir);
  try {
    await fsp.mkdir(abs, { recursive: true });
  } catch (e) {
    throw new ValidationError(`Expected a directory that can be created for ${field} but received ${abs}: ${errText(e)}`);
  }
  const st = await fsp.stat(abs);
  if (!st.isDirectory()) throw new ValidationError(`Expected a directory for ${field} but received ${abs} (not a directory)`);
  const probe = path.join(abs, `.write-probe-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    await fsp.writeFile(probe, 'ok', { flag: 'wx' });
  } catch (e) {
    throw new ValidationError(`Expected a writable directory for ${field} but received ${abs}: ${errText(e)}`);
  } finally {
    await fsp.rm(probe, { force: true }).catch(() => undefined);
  }
  return abs;
}
