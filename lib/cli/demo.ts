// `torch-dpo demo`: the README's main command, the end-to-end DPO demo (lib/demo/run_demo.ts).
import type { Command } from 'commander';
import { runDemo } from '../demo/run_demo';
import { parseInteger } from './common';

export function register(program: Command): void {
  program
    .command('demo')
    .description('end-to-end demo: SFT a tiny model, sample and rank pairs by a known reward, cache the reference, DPO, evaluate')
    .option('--out <dir>', 'output folder (default runs/demo; emptied first)')
    .option('--seed <n>', 'seed (default 7)', parseInteger)
    .option('--pairs <n>', 'preference pairs to sample (default 384)', parseInteger)
    .option('--no-progress', 'plain log lines')
    .action(async (o: { out?: string; seed?: number; pairs?: number; progress?: boolean }) => {
      await runDemo({ out: o.out, seed: o.seed, pairs: o.pairs, progress: o.progress !== false });
    });
}
