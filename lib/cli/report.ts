// `torch-dpo report DIR`: a static HTML page with plots of a run's metrics.
import type { Command } from 'commander';
import { writeReport } from '../report';

export function register(program: Command): void {
  program
    .command('report <dir>')
    .description('write DIR/report.html (loss, rewards, log-probs, learning rate) from DIR/metrics.jsonl')
    .option('-o, --out <file>', 'output file (default DIR/report.html)')
    .action(async (dir: string, o: { out?: string }) => {
      console.log(await writeReport(dir, o.out));
    });
}
