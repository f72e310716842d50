// `torch-dpo reward`: train a Bradley–Terry reward model (score head) on a preference data file, with the `train`
// command's options less the reference and loss ones, plus --center-rewards-coefficient.
import type { Command } from 'commander';
import { writeReport } from '../report';
import { RewardTrainer, RewardTrainerOptions } from '../trainer/reward_trainer';
import { fmt, parseNumber, Progress } from './common';
import { addTrainingOptions, optionsFromFlags } from './train';

export function register(program: Command): void {
  const cmd = program
    .command('reward')
    .description('train a reward model (a score head on --policy, HF …ForSequenceClassification) on preference pairs');
  addTrainingOptions(cmd, {
    reference: false,
    loss: false,
    extra: [
      ['--center-rewards-coefficient <n>', 'c in c·mean((r_w + r_l)²), keeps rewards centred (default none)', parseNumber],
      ['--margin <n>', 'm in −log σ(r_w − r_l − m) for every pair (default 0)', parseNumber],
    ],
  }).action(async (flags: Record<string, unknown>) => {
    const { opts, ui } = optionsFromFlags(flags);
    await runRewardTraining(opts as unknown as RewardTrainerOptions, ui);
  });
}

export async function runRewardTraining(opts: RewardTrainerOptions, ui: { progress: boolean; report: boolean; log?: (line: string) => void }): Promise<void> {
  const log = ui.log ?? ((l: string) => console.log(l));
  await using trainer = await RewardTrainer.create(opts);
  const bar = new Progress(trainer.state.totalSteps, 'reward', ui.progress && process.stdout.isTTY === true, log);
  const ac = new AbortController();
  const onSig = () => ac.abort();
  process.once('SIGINT', onSig);
  try {
    for await (const m of trainer.train({ signal: ac.signal })) {
      if ('eval_loss' in m) {
        bar.update(trainer.state.step, `eval loss ${fmt(m.eval_loss)} accuracy ${fmt(m.eval_accuracy, 3)} margin ${fmt(m.eval_margin)}`);
        continue;
      }
      bar.update(m.step, `loss ${fmt(m.loss)} accuracy ${fmt(m.accuracy, 3)} margin ${fmt(m.margin)} ${fmt(m.tokens_per_second, 3)} tok/s`);
    }
  } finally {
    bar.stop();
    process.removeListener('SIGINT', onSig);
  }
  if (ui.report) log(`report: ${await writeReport(trainer.options.outputDir)}`);
  log(`done: ${trainer.state.step} steps; reward model in ${trainer.options.outputDir}`);
}
