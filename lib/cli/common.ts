// Shared pieces of the CLI: strict flag parsers, config files, progress display.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { InvalidArgumentError } from 'commander';
import * as YAML from 'yaml';
import cliProgress from 'cli-progress';

export function parseNumber(v: string): number {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError(`Expected a number but received ${JSON.stringify(v)}`);
  return n;
}

export function parseInteger(v: string): number {
  const n = parseNumber(v);
  if (!Number.isInteger(n)) throw new InvalidArgumentError(`Expected an integer but received ${JSON.stringify(v)}`);
  return n;
}

export function parseList(v: string): string[] {
  return v.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
}

export function parseNumberList(v: string): number[] {
  return parseList(v).map(parseNumber);
}

const snakeToCamel = (k: string) => k.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());

/** Reads a .json / .yaml / .yml config file into an object with camelCase keys (TRL's snake_case names accepted). */
export function readConfigFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new Error(`${file}: cannot read config file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  let value: unknown;
  const ext = path.extname(file).toLowerCase();
  try {
    value = ext === '.yaml' || ext === '.yml' ? YAML.parse(text) : JSON.parse(text);
  } catch (e) {
    throw new Error(`${file}: not valid ${ext === '.json' ? 'JSON' : 'YAML'} (${(e as Error).message.split('\n')[0]})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error(`${file}: Expected an object of options at the top level`);
  return Object.fromEntries(Object.entries(value as Record<string, unknown>).map(([k, v]) => [snakeToCamel(k), v]));
}

/** A progress display: a bar on a TTY, plain lines otherwise. */
export class Progress {
  private bar: cliProgress.SingleBar | undefined;
  private lastLine = 0;
  constructor(
    private readonly total: number,
    private readonly label: string,
    enabled = process.stdout.isTTY === true,
    private readonly log: (line: string) => void = (l) => console.log(l),
  ) {
    if (enabled) {
      this.bar = new cliProgress.SingleBar(
        { format: `${label} [{bar}] {value}/{total} steps | {info} | ETA {eta_formatted}`, hideCursor: true, etaBuffer: 20 },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(total, 0, { info: '' });
    }
  }
  update(value: number, info: string): void {
    if (this.bar) this.bar.update(value, { info });
    else if (Date.now() - this.lastLine > 0) {
      this.lastLine = Date.now();
      this.log(`${this.label} ${value}/${this.total} ${info}`);
    }
  }
  stop(): void {
    this.bar?.stop();
  }
}

export function fmt(x: number | undefined, digits = 4): string {
  if (x === undefined || !Number.isFinite(x)) return '-';
  return Math.abs(x) >= 1000 ? x.toFixed(0) : x.toPrecision(digits);
}
