// `torch-dpo precompute`: reference log-probs of a data file into the content-keyed cache.
import type { Command } from 'commander';
import { precomputeKTOReference, precomputeReference } from '../trainer/precompute';
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
    .option('--padding-free', 'pack sequences into fewer rows for the forward (same values, no compute on padding)')
    .option('--kto', "for a KTO run: replay its batches (--batch-size is then the run's per-device batch size) so that the mismatched pairs are cached too")
    .option('--seed <n>', 'with --kto: the run\'s seed (default 42)', parseInteger)
    .option('--no-shuffle', 'with --kto: the run keeps the file order')
    .option('--shuffle-buffer-size <n>', 'with --kto: the run\'s shuffle buffer (default 10000)', parseInteger)
    .option('--epochs <n>', 'with --kto: epochs of the run (default 1)', parseInteger)
    .option('--world-size <n>', 'with --kto: ranks of the data-parallel run (default 1)', parseInteger)
    .action(async (o: Record<string, any>) => {
      const common = {
        reference: o.reference, data: o.data, cache: o.cache, maxLength: o.maxLength,
        maxPromptLength: o.maxPromptLength, truncationMode: o.truncationMode, device: o.device as Device | undefined, dtype: o.dtype as DType | undefined,
        paddingFree: o.paddingFree === true,
      };
      const r = o.kto
        ? await precomputeKTOReference({ ...common, perDeviceTrainBatchSize: o.batchSize ?? 8, seed: o.seed, shuffle: o.shuffle, shuffleBufferSize: o.shuffleBufferSize, epochs: o.epochs, worldSize: o.worldSize })
        : await precomputeReference({ ...common, batchSize: o.batchSize });
      console.log(`precompute: ${r.examples} examples, ${r.computed} sequences computed, ${r.cached} already cached, ${fmt(r.tokensPerSecond, 3)} tokens/s`);
    });
}
