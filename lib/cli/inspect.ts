// `torch-dpo tokenize | logps | generate`: look at data and models.
import * as fs from 'node:fs';
import type { Command } from 'commander';
import { Model } from '../model';
import { Tokenizer } from '../tokenizer';
import { isPreference } from '../data';
import { pairBatches, tokenizedExamples } from '../trainer/data_source';
import { DType, Device } from '../validate';
import { parseInteger, parseNumber } from './common';

const source = (data: string, o: Record<string, any>) => ({
  data, maxLength: o.maxLength ?? 1 << 24, maxPromptLength: o.maxPromptLength ?? (1 << 24) - 1, truncationMode: 'keep_end' as const,
  overlongPolicy: 'truncate' as const, perDeviceTrainBatchSize: o.batchSize ?? 8, shuffle: false, shuffleBufferSize: 1, seed: 0,
});

function out(file: string | undefined): (line: string) => void {
  if (!file) return (l) => process.stdout.write(l + '\n');
  const fd = fs.openSync(file, 'w');
  process.once('exit', () => fs.closeSync(fd));
  return (l) => fs.writeSync(fd, l + '\n');
}

export function register(program: Command): void {
  program
    .command('tokenize')
    .description('print one JSON line per example: {index, prompt_ids, chosen_ids, rejected_ids} ({index, prompt_ids, completion_ids, label} for unpaired records)')
    .requiredOption('--model <dir>', 'model directory with tokenizer.json')
    .requiredOption('--data <file>', 'data file (.jsonl or .parquet)')
    .option('--max-length <n>', 'truncate like training', parseInteger)
    .option('--max-prompt-length <n>', 'truncate like training', parseInteger)
    .action(async (o: Record<string, any>) => {
      const tok = await Tokenizer.fromDir(o.model);
      let index = 0;
      for await (const ex of tokenizedExamples(source(o.data, o), tok)) {
        const fields = isPreference(ex) ? { prompt_ids: ex.prompt_ids, chosen_ids: ex.chosen_ids, rejected_ids: ex.rejected_ids } : { prompt_ids: ex.prompt_ids, completion_ids: ex.completion_ids, label: ex.label };
        console.log(JSON.stringify({ index: index++, ...fields }));
      }
    });

  program
    .command('logps')
    .description('print one JSON line per example, in input order, with chosen/rejected log-probs (sums and per token)')
    .requiredOption('--model <dir>', 'model directory')
    .requiredOption('--data <file>', 'data file (.jsonl or .parquet)')
    .option('--out <file>', 'write to a file instead of stdout')
    .option('--batch-size <n>', 'pairs per batch (default 8)', parseInteger)
    .option('--device <d>', 'cpu | cuda | cuda:N')
    .option('--dtype <d>', 'float32 | bfloat16 | float16')
    .action(async (o: Record<string, any>) => {
      await using model = await Model.load(o.model, { device: o.device as Device | undefined, dtype: o.dtype as DType | undefined });
      const write = out(o.out);
      let index = 0;
      for await (const b of pairBatches(source(o.data, o), model.requireTokenizer(), 0, 0)) {
        const seqs = b.examples.flatMap((e) => [e.prompt_ids.concat(e.chosen_ids)]).concat(b.examples.map((e) => e.prompt_ids.concat(e.rejected_ids)));
        const tl = await model.tokenLogps(seqs);
        b.examples.forEach((e, i) => {
          const P = e.prompt_ids.length;
          const c = Array.from(tl[i].slice(P - 1));
          const r = Array.from(tl[b.size + i].slice(P - 1));
          const sum = (a: number[]) => a.reduce((x, y) => x + y, 0);
          write(JSON.stringify({ index: index++, chosen_logp: sum(c), rejected_logp: sum(r), chosen_token_logps: c, rejected_token_logps: r }));
        });
      }
    });

  program
    .command('generate')
    .description('print a completion of a prompt')
    .requiredOption('--model <dir>', 'model directory')
    .requiredOption('--prompt <text>', 'prompt text')
    .option('--chat', 'apply the chat template (as a user message, with the generation prompt)')
    .option('--max-new-tokens <n>', 'default 64', parseInteger)
    .option('--temperature <t>', '0 = greedy (default)', parseNumber)
    .option('--top-k <k>', 'sample from the k most likely (0 = all)', parseInteger)
    .option('--top-p <p>', 'nucleus mass (default 1)', parseNumber)
    .option('--seed <n>', 'sampling seed (default 0)', parseInteger)
    .option('--json', 'print {prompt_ids, ids, text} as one JSON line')
    .option('--device <d>', 'cpu | cuda | cuda:N')
    .option('--dtype <d>', 'float32 | bfloat16 | float16')
    .action(async (o: Record<string, any>) => {
      await using model = await Model.load(o.model, { device: o.device as Device | undefined, dtype: o.dtype as DType | undefined });
      const r = await model.generateText(o.prompt, { chat: o.chat === true, maxNewTokens: o.maxNewTokens, temperature: o.temperature, topK: o.topK, topP: o.topP, seed: o.seed });
      console.log(o.json ? JSON.stringify({ prompt_ids: r.promptIds, ids: r.ids, text: r.text }) : r.text);
    });
}
