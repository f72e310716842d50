// tokenizeExamples on worker threads: the same results, in the same order, with the same errors and stats as the
// sequential version, for tokenizers loaded with Tokenizer.fromDir. The main thread reads records and sends chunks
// to the workers; at most `workers * 2` chunks are in flight, so reading stays pull-based and memory bounded. When
// the consumer stops (or an error is thrown) the workers are terminated.

import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import type { Tokenizer } from '../tokenizer';
import { ValidationError, checkInt, checkKnownKeys } from '../validate';
import type { SourceRecord, TokenizedExample } from './formats';
import type { AnyIterable } from './shuffle';
import { TokenizeOptions, newStats } from './tokenize';
import type { WorkerReply } from './tokenize_worker';

export interface ParallelTokenizeOptions extends TokenizeOptions {
  /** Worker threads (default 2). */
  workers?: number;
  /** Records per message to a worker (default 64). */
  chunkSize?: number;
}

const KEYS = ['format', 'onIdentical', 'roles', 'appendEos', 'templateVars', 'maxLength', 'maxPromptLength', 'truncationMode', 'overlongPolicy', 'stats', 'workers', 'chunkSize'] as const;

interface Pending {
  resolve: (r: WorkerReply) => void;
  reject: (e: Error) => void;
}

export async function* tokenizeExamplesParallel(
  source: AnyIterable<SourceRecord>, tokenizer: Tokenizer, opts: ParallelTokenizeOptions = {},
): AsyncGenerator<TokenizedExample> {
  checkKnownKeys(opts as Record<string, unknown>, KEYS, 'tokenizeExamplesParallel');
  const nWorkers = checkInt(opts.workers ?? 2, 'workers', 1, 256);
  const chunkSize = checkInt(opts.chunkSize ?? 64, 'chunkSize', 1);
  const stats = opts.stats ?? newStats();
  const { workers: _w, chunkSize: _c, stats: _s, ...workerOpts } = opts;
  void _w; void _c; void _s;

  const pool: Worker[] = [];
  const waiting = new Map<number, Pending>(); // seq -> its promise callbacks
  const ready: Promise<void>[] = [];
  let fatal: Error | undefined;
  const failAll = (e: Error) => {
    fatal ??= e;
    for (const p of waiting.values()) p.reject(e);
    waiting.clear();
  };
  for (let i = 0; i < nWorkers; i++) {
    const w = new Worker(join(__dirname, 'tokenize_worker.js'), { workerData: { dir: tokenizer.dir, opts: workerOpts } });
    ready.push(new Promise<void>((res, rej) => {
      w.on('message', (r: WorkerReply) => {
        if (r.seq === -2) return res();
        if (r.seq === -1) {
          const e = new ValidationError(r.error ?? 'tokenizer worker failed to start');
          rej(e);
          return failAll(e);
        }
        const p = waiting.get(r.seq);
        waiting.delete(r.seq);
        p?.resolve(r);
      });
      w.on('error', (e) => { rej(e); failAll(e); });
      w.on('exit', (code) => {
        if (code !== 0) {
          const e = new Error(`tokenizer worker exited with code ${code}`);
          rej(e);
          failAll(e);
        }
      });
    }));
    pool.push(w);
  }

  const inFlight: Promise<WorkerReply>[] = [];
  let seq = 0;
  const send = (records: SourceRecord[]) => {
    if (fatal) throw fatal;
    const s = seq++;
    const w = pool[s % nWorkers];
    inFlight.push(new Promise<WorkerReply>((resolve, reject) => {
      waiting.set(s, { resolve, reject });
      w.postMessage({ seq: s, records });
    }));
  };
  function* take(r: WorkerReply): Generator<TokenizedExample> {
    stats.examples += r.stats.examples;
    stats.truncated += r.stats.truncated;
    stats.dropped += r.stats.dropped;
    stats.skippedIdentical += r.stats.skippedIdentical;
    yield* r.examples;
    if (r.error !== undefined) throw new ValidationError(r.error);
  }

  try {
    await Promise.all(ready);
    let chunk: SourceRecord[] = [];
    for await (const rec of source) {
      chunk.push(rec);
      if (chunk.length < chunkSize) continue;
      send(chunk);
      chunk = [];
      // keep at most 2 chunks per worker in flight: yield finished ones in order before reading more
      while (inFlight.length >= 2 * nWorkers) yield* take(await inFlight.shift()!);
    }
    if (chunk.length > 0) send(chunk);
    while (inFlight.length > 0) yield* take(await inFlight.shift()!);
  } finally {
    // Errors of chunks not awaited any more must not surface as unhandled rejections.
    for (const p of inFlight) p.catch(() => undefined);
    await Promise.all(pool.map((w) => w.terminate()));
  }
}
