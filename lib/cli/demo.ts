// `torch-dpo demo`: the README's main command (grows into the end-to-end DPO demo).
import type { Command } from 'commander';
import { runtimeInfo, matmulBenchmark } from '../runtime';

export function register(program: Command): void {
  program
    .command('demo')
    .description('run the end-to-end demo')
    .action(async () => {
      const i = runtimeInfo();
      console.log(`libtorch ${i.libtorchVersion}, CUDA ${i.cudaAvailable ? 'yes' : 'no'}, ${i.intraOpThreads} threads`);
      const g = await matmulBenchmark(512, 20);
      console.log(`float32 512x512 matmul: ${g.toFixed(1)} GFLOP/s`);
    });
}
