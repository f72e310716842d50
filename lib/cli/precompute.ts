// `torch-dpo precompute`: reference log-probs of a data file into the content-keyed cache.
import type { Command } from 'commander';
import { precomputeReference } from '../trainer/precompute';
import { DType, Device } from '../validate';
import { fmt, parseInteger } from './common';

export function register(program: Command): void {
  program
    .command('precompute')
    .description('compute reference log-probs of a data file once, into a cache that training reads')
    .requiredOption('--reference <dir>', 'reference model directory')
    .requiredOption('--data <file>', 'data file (.jsonl or .parquet)')
    .requiredOption('--cache <dir>', 'cache directory (created when missing; only new examples are computed)')
    .option('--batch-size <n>', 'pairs per forward batch (default 16)', parseInteger)
    .option('--max-length <n>', 'as in training (default 1024)', parseInteger)
    .option('--max-prompt-length <n>', 'as in training (default 512)', parseInteger)
    .option('--truncation-mode <m>', 'keep_end | keep_start')
    .option('--device <d>', 'cpu | cuda | cuda:N')
    .option('--dtype <d>', 'float32 | bfloat16 | float16')
    .action(async (o: Record<string, any>) => {
      const r = await precomputeReference({
        reference: o.reference, data: o.data, cache: o.cache, batchSize: o.batchSize, maxLength: o.maxLength,
        maxPromptLength: o.maxPromptLength, truncationMode: o.truncationMode, device: o.device as Device | undefined, dtype: o.dtype as DType | undefined,
      });
      console.log(`precompute: ${r.examples} examples, ${r.computed} sequences computed, ${r.cached} already cached, ${fmt(r.tokensPerSecond, 3)} tokens/s`);
    });
}
