// `torch-dpo reward`: train a Bradley–Terry reward model (score head) on a preference data file, with the `train`
// command's options less the reference and loss ones, plus --center-rewards-coefficient.
import type { Command } from 'commander';
import { rewardOptions, RewardTrainerOptions } from '../trainer/reward_trainer';
import { parseNumber } from './common';
import { addTrainingOptions, optionsFromFlags, runTraining } from './train';

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
    await runTraining(rewardOptions(opts as unknown as RewardTrainerOptions), { ...ui, label: 'reward' });
  });
}
