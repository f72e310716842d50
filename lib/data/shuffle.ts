// Seeded, deterministic stream shuffling and train/eval splitting (pull-based async iteration).

import { ValidationError, checkInt, checkNumber } from '../validate';

export type AnyIterable<T> = Iterable<T> | AsyncIterable<T>;

/** mulberry32: a small 32-bit PRNG; the same seed gives the same sequence on every platform. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface ShuffleOptions {
  /** Items held in memory (>= 1). The output is a uniformly random order when bufferSize >= stream length. */
  bufferSize: number;
  /** 32-bit integer seed. */
  seed: number;
}

/**
 * Buffer shuffle: fill a buffer of `bufferSize` items; for each further item, emit a uniformly chosen buffered item
 * and put the new one in its place; at the end emit the rest in a Fisher-Yates order. Same seed + same input order
 * -> same output order.
 */
export async function* shuffleBuffer<T>(source: AnyIterable<T>, opts: ShuffleOptions): AsyncGenerator<T> {
  const size = checkInt(opts.bufferSize, 'bufferSize', 1);
  const rand = mulberry32(checkInt(opts.seed, 'seed', -(2 ** 31), 2 ** 32 - 1));
  const buf: T[] = [];
  for await (const item of source) {
    if (buf.length < size) {
      buf.push(item);
      continue;
    }
    const j = Math.floor(rand() * size);
    const out = buf[j];
    buf[j] = item;
    yield out;
  }
  for (let i = buf.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    const t = buf[i];
    buf[i] = buf[j];
    buf[j] = t;
  }
  yield* buf;
}

export interface SplitOptions {
  /** Fraction of items sent to eval, chosen by a seeded hash of the item's index (0 < f < 1). */
  evalFraction?: number;
  /** Every N-th item (index N-1, 2N-1, ...) goes to eval. */
  evalEvery?: number;
  /** Seed for evalFraction (default 0). */
  seed?: number;
}

/** 32-bit integer hash of (seed, index) mapped to [0, 1). */
function hashUnit(seed: number, index: number): number {
  let h = (Math.imul(index >>> 0, 0x9e3779b1) ^ Math.imul((index / 4294967296) >>> 0, 0x85ebca77) ^ (seed >>> 0)) >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d);
  h ^= h >>> 15;
  h = Math.imul(h, 0x846ca68b);
  h ^= h >>> 16;
  return (h >>> 0) / 4294967296;
}

/** Returns the predicate deciding whether the item at `index` (0-based) belongs to eval. */
export function evalPredicate(opts: SplitOptions): (index: number) => boolean {
  if ((opts.evalFraction === undefined) === (opts.evalEvery === undefined)) {
    throw new ValidationError(`Expected exactly one of evalFraction, evalEvery for splitEval options but received ${opts.evalFraction === undefined ? 'neither' : 'both'}`);
  }
  if (opts.evalEvery !== undefined) {
    const n = checkInt(opts.evalEvery, 'evalEvery', 2);
    return (i) => i % n === n - 1;
  }
  const f = checkNumber(opts.evalFraction, 'evalFraction', { minExclusive: 0, max: 1 });
  const seed = checkInt(opts.seed ?? 0, 'seed', -(2 ** 31), 2 ** 32 - 1);
  return (i) => hashUnit(seed, i) < f;
}

/**
 * Splits a stream into train and eval parts by item index (deterministic). Each part re-reads the source, so
 * `source` must be re-iterable (an array, or a function returning a fresh iterable each call); a one-shot
 * generator object is rejected.
 */
export function splitEval<T>(source: AnyIterable<T> | (() => AnyIterable<T>), opts: SplitOptions): { train: AsyncIterable<T>; eval: AsyncIterable<T> } {
  const isEval = evalPredicate(opts);
  const open = (): AnyIterable<T> => (typeof source === 'function' ? source() : source);
  if (typeof source !== 'function') {
    const it = (source as AsyncIterable<T>)[Symbol.asyncIterator]?.() ?? (source as Iterable<T>)[Symbol.iterator]?.();
    if (it === undefined) throw new ValidationError(`Expected an iterable or a function returning one for source but received ${typeof source}`);
    if ((it as unknown) === source) {
      throw new ValidationError('Expected a re-iterable source (an array, or a function returning a fresh iterable) for source but received a one-shot iterator');
    }
  }
  const part = (wantEval: boolean): AsyncIterable<T> => ({
    async *[Symbol.asyncIterator]() {
      let i = 0;
      for await (const item of open()) {
        if (isEval(i++) === wantEval) yield item;
      }
    },
  });
  return { train: part(false), eval: part(true) };
}
