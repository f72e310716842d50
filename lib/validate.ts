// The one vocabulary of checks and messages for everything that crosses into native code or comes from a user.
// Message form: "Expected <what is allowed> for <field> but received <value>".

export class ValidationError extends TypeError {
  constructor(message: string) {
    super(message);
    this.name = 'ValidationError';
  }
}

export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (typeof v === 'string') return JSON.stringify(v.length > 60 ? v.slice(0, 57) + '...' : v);
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  if (Array.isArray(v)) return `an array of length ${v.length}`;
  if (ArrayBuffer.isView(v)) return `${v.constructor.name}(${(v as unknown as { length: number }).length})`;
  if (typeof v === 'function') return 'a function';
  return 'an object';
}

export function fail(expected: string, field: string, got: unknown): never {
  throw new ValidationError(`Expected ${expected} for ${field} but received ${describe(got)}`);
}

export function checkNumber(v: unknown, field: string, opts: { min?: number; max?: number; minExclusive?: number; integer?: boolean } = {}): number {
  const { min, max, minExclusive, integer } = opts;
  const range =
    (integer ? 'an integer' : 'a finite number') +
    (minExclusive !== undefined ? ` > ${minExclusive}` : '') +
    (min !== undefined && max !== undefined ? ` in [${min}, ${max}]` : (min !== undefined ? ` >= ${min}` : '') + (max !== undefined ? ` <= ${max}` : ''));
  if (typeof v !== 'number' || !Number.isFinite(v)) fail(range, field, v);
  if (integer && !Number.isInteger(v)) fail(range, field, v);
  if (min !== undefined && v < min) fail(range, field, v);
  if (max !== undefined && v > max) fail(range, field, v);
  if (minExclusive !== undefined && !(v > minExclusive)) fail(range, field, v);
  return v;
}

export function checkInt(v: unknown, field: string, min = -Infinity, max = Infinity): number {
  return checkNumber(v, field, { integer: true, min: Number.isFinite(min) ? min : undefined, max: Number.isFinite(max) ? max : undefined });
}

export function checkString(v: unknown, field: string, opts: { nonEmpty?: boolean } = {}): string {
  if (typeof v !== 'string' || (opts.nonEmpty && v.length === 0)) fail(opts.nonEmpty ? 'a non-empty string' : 'a string', field, v);
  return v;
}

export function checkBool(v: unknown, field: string): boolean {
  if (typeof v !== 'boolean') fail('a boolean', field, v);
  return v;
}

export function checkOneOf<T extends string>(v: unknown, field: string, allowed: readonly T[]): T {
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) fail(`one of ${allowed.map((a) => `'${a}'`).join(', ')}`, field, v);
  return v as T;
}

export function checkObject(v: unknown, field: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail('an object', field, v);
  return v as Record<string, unknown>;
}

export function checkArray(v: unknown, field: string): unknown[] {
  if (!Array.isArray(v)) fail('an array', field, v);
  return v;
}

export function checkFloat32Array(v: unknown, field: string, length?: number): Float32Array {
  if (!(v instanceof Float32Array)) fail('a Float32Array', field, v);
  if (length !== undefined && v.length !== length) fail(`a Float32Array of length ${length}`, field, v);
  return v;
}

export function checkInt32Array(v: unknown, field: string, length?: number): Int32Array {
  if (!(v instanceof Int32Array)) fail('an Int32Array', field, v);
  if (length !== undefined && v.length !== length) fail(`an Int32Array of length ${length}`, field, v);
  return v;
}

/** Token ids: integers in [0, vocabSize). */
export function checkTokenIds(v: unknown, field: string, vocabSize?: number): number[] {
  if (!Array.isArray(v)) fail('an array of token ids', field, v);
  for (let i = 0; i < v.length; i++) {
    const x = v[i];
    if (typeof x !== 'number' || !Number.isInteger(x) || x < 0 || (vocabSize !== undefined && x >= vocabSize)) {
      fail(vocabSize !== undefined ? `token ids in [0, ${vocabSize})` : 'non-negative integer token ids', `${field}[${i}]`, x);
    }
  }
  return v as number[];
}

/** Rejects keys not in `known`, naming the unknown key and the closest accepted ones. */
export function checkKnownKeys(obj: Record<string, unknown>, known: readonly string[], owner: string): void {
  for (const k of Object.keys(obj)) {
    if (!known.includes(k)) throw new ValidationError(`Unknown option '${k}' for ${owner}; accepted: ${known.join(', ')}`);
  }
}

export type Device = 'cpu' | 'cuda' | `cuda:${number}`;
export type DType = 'float32' | 'bfloat16' | 'float16';

export function checkDevice(v: unknown, field: string): Device {
  if (typeof v !== 'string' || !/^(cpu|cuda(:\d+)?)$/.test(v)) fail("'cpu', 'cuda' or 'cuda:N'", field, v);
  return v as Device;
}

export function checkDType(v: unknown, field: string): DType {
  return checkOneOf(v, field, ['float32', 'bfloat16', 'float16'] as const);
}
