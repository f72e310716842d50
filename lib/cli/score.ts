// `torch-dpo score`: rewards of a data file under a reward model, one JSON line per record in file order:
// preference records -> {line, chosen, rejected, margin}; prompt + completion records -> {line, reward}.
import * as path from 'node:path';
import type { Command } from 'commander';
import { Model } from '../model';
import { DataError, locationOf, readRecords, SourceRecord, tokenizeRecord, UnpairedExample, PreferenceExample } from '../data';
import { checkInt, DType, Device } from '../validate';
import { parseInteger } from './common';

type Scored = { line: number; seqs: number[][]; pair: boolean };

/** Scores every record of `file`; calls `write` with each output line, in file order. */
export async function scoreFile(model: Model, file: string, batchSize: number, write: (line: string) => void): Promise<number> {
  checkInt(batchSize, 'batchSize', 1, 1 << 20);
  if (!model.isRewardModel) {
    const arch = JSON.stringify(model.config.architectures ?? null);
    throw new Error(`${path.join(model.dir ?? 'model', 'config.json')}: not a reward model (architectures ${arch}; expected a …ForSequenceClassification); train one with \`torch-dpo reward\``);
  }
  const tok = model.requireTokenizer();
  let pending: Scored[] = [];
  let count = 0;
  const flush = async () => {
    if (pending.length === 0) return;
    const r = await model.rewards(pending.flatMap((p) => p.seqs));
    let k = 0;
    for (const p of pending) {
      if (p.pair) {
        const chosen = r[k++], rejected = r[k++];
        write(JSON.stringify({ line: p.line, chosen, rejected, margin: chosen - rejected }));
      } else {
        write(JSON.stringify({ line: p.line, reward: r[k++] }));
      }
    }
    count += pending.length;
    pending = [];
  };
  for await (const rec of readRecords(file) as AsyncGenerator<SourceRecord>) {
    const where = locationOf(rec);
    const v = rec.value;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new DataError(where, `Expected a JSON object but received ${JSON.stringify(v)}`);
    const single = 'completion' in v || 'completion_ids' in v;
    if (single) {
      const ex = tokenizeRecord({ ...v, label: true }, tok, where, { format: 'unpaired' }) as UnpairedExample;
      pending.push({ line: rec.line, seqs: [ex.prompt_ids.concat(ex.completion_ids)], pair: false });
    } else {
      const ex = tokenizeRecord(v, tok, where) as PreferenceExample | null;
      if (!ex || !('chosen_ids' in ex)) throw new DataError(where, 'Expected a preference record (prompt, chosen, rejected) or a prompt + completion record');
      pending.push({ line: rec.line, seqs: [ex.prompt_ids.concat(ex.chosen_ids), ex.prompt_ids.concat(ex.rejected_ids)], pair: true });
    }
    if (pending.length >= batchSize) await flush();
  }
  await flush();
  if (count === 0) throw new Error(`${file}: no records`);
  return count;
}

export function register(program: Command): void {
  program
    .command('score')
    .description('print rewards of a reward model, one JSON line per record: {line, chosen, rejected, margin} or {line, reward}')
    .requiredOption('--model <dir>', 'reward model directory (…ForSequenceClassification, e.g. from `torch-dpo reward`)')
    .requiredOption('--data <file>', 'preference or prompt + completion records (.jsonl or .parquet)')
    .option('--batch-size <n>', 'records per forward pass (default 16)', parseInteger)
    .option('--device <d>', 'cpu | cuda | cuda:N')
    .option('--dtype <d>', 'float32 | bfloat16 | float16')
    .action(async (o: Record<string, any>) => {
      await using model = await Model.load(o.model, { device: o.device as Device | undefined, dtype: o.dtype as DType | undefined });
      await scoreFile(model, o.data, o.batchSize ?? 16, (l) => process.stdout.write(l + '\n'));
    });
}
