// `torch-dpo orpo|cpo|sft|kto`: the DPO relatives, with the `train` command's options less the loss ones (and less the
// reference ones for the reference-free trainers), plus each trainer's own loss options.
import type { Command } from 'commander';
import { parseNumber } from './common';
import { addTrainingOptions, optionsFromFlags, runTraining } from './train';
import { ktoOptions, KTOTrainerOptions } from '../trainer/kto_trainer';
import { cpoOptions, CPOTrainerOptions, orpoOptions, ORPOTrainerOptions, sftOptions, SFTTrainerOptions } from '../trainer/preference_trainers';

export function register(program: Command): void {
  const orpo = program.command('orpo').description('train a policy by ORPO (NLL + odds-ratio term; no reference model)');
  addTrainingOptions(orpo, { reference: false, loss: false, extra: [['--orpo-alpha <n>', 'λ, weight of the odds-ratio term (default 0.1)', parseNumber]] })
    .action(async (flags: Record<string, unknown>) => {
      const { opts, ui } = optionsFromFlags(flags);
      await runTraining(orpoOptions(opts as unknown as ORPOTrainerOptions), { ...ui, label: 'orpo' });
    });

  const cpo = program.command('cpo').description('train a policy by CPO or SimPO (reference-free preference loss + α·NLL)');
  addTrainingOptions(cpo, {
    reference: false,
    loss: false,
    extra: [
      ['--loss <type>', 'sigmoid (default) | hinge | ipo | simpo'],
      ['--beta <n>', 'β (default 0.1)', parseNumber],
      ['--label-smoothing <n>', 'ε of the sigmoid / simpo loss (default 0)', parseNumber],
      ['--simpo-gamma <n>', 'γ, target margin of simpo (default 0.5)', parseNumber],
      ['--cpo-alpha <n>', 'weight of the NLL term (default 1; 0 = none, as SimPO)', parseNumber],
    ],
  }).action(async (flags: Record<string, unknown>) => {
    const { opts, ui } = optionsFromFlags(flags);
    await runTraining(cpoOptions(opts as unknown as CPOTrainerOptions), { ...ui, label: 'cpo' });
  });

  const kto = program.command('kto').description('train a policy by KTO on unpaired examples {prompt, completion, label} (pairs are split)');
  addTrainingOptions(kto, {
    reference: true,
    loss: false,
    extra: [
      ['--beta <n>', 'β (default 0.1)', parseNumber],
      ['--desirable-weight <n>', 'weight of desirable examples (default 1)', parseNumber],
      ['--undesirable-weight <n>', 'weight of undesirable examples (default 1)', parseNumber],
      ['--reference-free', 'treat the reference as uniform'],
    ],
  }).action(async (flags: Record<string, unknown>) => {
    const { opts, ui } = optionsFromFlags(flags);
    await runTraining(ktoOptions(opts as unknown as KTOTrainerOptions), { ...ui, label: 'kto' });
  });

  const sft = program.command('sft').description('supervised fine-tuning on the chosen completions of a preference data file');
  addTrainingOptions(sft, { reference: false, loss: false }).action(async (flags: Record<string, unknown>) => {
    const { opts, ui } = optionsFromFlags(flags);
    await runTraining(sftOptions(opts as unknown as SFTTrainerOptions), { ...ui, label: 'sft' });
  });
}
