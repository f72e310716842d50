// `torch-dpo info`: what libtorch this build uses, devices and threads.
import type { Command } from 'commander';
import { runtimeInfo } from '../runtime';

export function register(program: Command): void {
  program
    .command('info')
    .description('print the libtorch version, CUDA availability and thread settings')
    .option('--json', 'print one JSON object')
    .action((opts: { json?: boolean }) => {
      const i = runtimeInfo();
      if (opts.json) console.log(JSON.stringify(i));
      else console.log(`libtorch ${i.libtorchVersion}, CUDA ${i.cudaAvailable ? `yes (${i.cudaDeviceCount} device(s))` : 'no'}, intra-op threads ${i.intraOpThreads}, data-parallel backends ${i.distBackends.join(', ') || 'none'}`);
    });
}
