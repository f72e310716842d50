// `torch-dpo train`: DPO training from a config file and/or flags (flags win).
import type { Command } from 'commander';
import { DPOTrainer } from '../trainer/dpo_trainer';
import { DPOTrainerOptions } from '../trainer/options';
import { writeReport } from '../report';
import { fmt, parseInteger, parseList, parseNumber, parseNumberList, Progress, readConfigFile } from './common';

// flag -> option name (flags not listed map by camelCase of the flag)
const RENAME: Record<string, string> = { output: 'outputDir', loss: 'lossType', batchSize: 'perDeviceTrainBatchSize' };

export type OptionSpec = [flags: string, description: string, parse?: (v: string) => unknown];

// The options of every training subcommand (train, orpo, cpo, sft), in help order; `reference` and `loss` ones only
// where the command uses them.
const DATA_OPTIONS: OptionSpec[] = [
  ['--config <file>', 'options as JSON or YAML (camelCase or TRL snake_case keys); flags override it'],
  ['--policy <dir>', 'policy model directory (Hugging Face layout)'],
];
const REFERENCE_OPTIONS: OptionSpec[] = [
  ['--reference <dir>', 'reference model directory'],
  ['--ref-cache <dir>', 'reference log-prob cache (from `precompute`, or filled while training)'],
];
const IO_OPTIONS: OptionSpec[] = [
  ['--data <file>', 'training data (.jsonl or .parquet)'],
  ['--eval-data <file>', 'evaluation data'],
  ['--output <dir>', 'output directory (checkpoints, metrics.jsonl, report.html)'],
];
const LOSS_OPTIONS: OptionSpec[] = [
  ['--loss <types>', 'loss type(s), comma separated (sigmoid, ipo, hinge, robust, sft, orpo, simpo, cpo, ...)', parseList],
  ['--loss-weights <ws>', 'weights of the loss types, comma separated', parseNumberList],
  ['--beta <n>', 'β (default 0.1)', parseNumber],
  ['--label-smoothing <n>', 'ε of cDPO (default 0)', parseNumber],
  ['--reference-free', 'treat the reference as uniform'],
  ['--simpo-gamma <n>', 'γ, target margin of the simpo loss (default 0.5)', parseNumber],
];
const RUN_OPTIONS: OptionSpec[] = [
  ['--learning-rate <n>', 'peak learning rate (default 1e-6)', parseNumber],
  ['--batch-size <n>', 'pairs per micro-batch (default 8)', parseInteger],
  ['--gradient-accumulation-steps <n>', 'micro-batches per step (default 1)', parseInteger],
  ['--max-length <n>', 'longest prompt+completion (default 1024)', parseInteger],
  ['--max-prompt-length <n>', 'longest prompt (default 512)', parseInteger],
  ['--truncation-mode <m>', 'keep_end | keep_start'],
  ['--overlong-policy <p>', 'truncate | drop | error'],
  ['--warmup-ratio <n>', 'fraction of steps of warmup (default 0)', parseNumber],
  ['--lr-scheduler-type <t>', 'linear | cosine | constant'],
  ['--weight-decay <n>', 'weight decay (default 0)', parseNumber],
  ['--max-grad-norm <n>', 'gradient clipping, 0 = off (default 1)', parseNumber],
  ['--num-train-epochs <n>', 'epochs (default 1)', parseNumber],
  ['--max-steps <n>', 'optimizer steps; overrides epochs', parseInteger],
  ['--seed <n>', 'seed (default 42)', parseInteger],
  ['--no-shuffle', 'keep the file order'],
  ['--shuffle-buffer-size <n>', 'shuffle buffer in examples (default 10000)', parseInteger],
  ['--optimizer <o>', 'adamw | sgd'],
  ['--adam-beta1 <n>', 'AdamW β1', parseNumber],
  ['--adam-beta2 <n>', 'AdamW β2', parseNumber],
  ['--adam-epsilon <n>', 'AdamW ε', parseNumber],
  ['--dtype <d>', 'float32 | bfloat16 | float16'],
  ['--device <d>', 'cpu | cuda | cuda:N'],
  ['--logging-steps <n>', 'log every N steps (default 10)', parseInteger],
  ['--eval-steps <n>', 'evaluate every N steps', parseInteger],
  ['--save-steps <n>', 'checkpoint every N steps (default 500)', parseInteger],
  ['--resume [checkpoint]', 'resume from the latest checkpoint in --output, or the given one'],
  ['--max-non-finite-steps <n>', 'non-finite steps tolerated (default 3)', parseInteger],
  ['--chunk-rows <n>', 'tokens per lm-head chunk (default 1024)', parseInteger],
  ['--padding-free', 'pack sequences into fewer rows: no compute on padding, same results'],
  ['--activation-checkpointing', 'recompute each block in backward instead of keeping its activations (less memory, ~1/3 more block compute)'],
  ['--no-overlap-grad-sync', 'under launch: all-reduce all gradients before the step instead of during the last backward'],
  ['--dist-backend <b>', 'under launch: auto | gloo | nccl (default auto: nccl on CUDA when built with it, else gloo)'],
  ['--lora-r <n>', 'train LoRA adapters of this rank instead of all weights (PEFT r; default 8 when another --lora-* is given)', parseInteger],
  ['--lora-alpha <n>', 'LoRA alpha: the update is scaled by alpha/r (default 8)', parseNumber],
  ['--lora-dropout <n>', 'LoRA dropout on the adapter input (default 0)', parseNumber],
  ['--lora-targets <modules>', 'LoRA target modules, comma separated (default q_proj,v_proj; gpt2: c_attn)', parseList],
  ['--save-merged', 'with LoRA: also write the merged model to <final checkpoint>/merged'],
  ['--no-progress', 'plain log lines even on a terminal'],
  ['--no-report', 'do not write report.html at the end'],
];

/** Adds the training options to `cmd`: all of them (`train`), or without the reference and loss ones (the
 *  reference-free trainers, which add their own loss options with `extra`, placed after --output). */
export function addTrainingOptions(cmd: Command, which: { reference: boolean; loss: boolean; extra?: OptionSpec[] }): Command {
  const specs = [
    ...DATA_OPTIONS,
    ...(which.reference ? REFERENCE_OPTIONS : []),
    ...IO_OPTIONS,
    ...(which.loss ? LOSS_OPTIONS : []),
    ...(which.extra ?? []),
    ...RUN_OPTIONS,
  ];
  for (const [flags, description, parse] of specs) {
    if (parse) cmd.option(flags, description, parse as (v: string, prev: unknown) => unknown);
    else cmd.option(flags, description);
  }
  return cmd;
}

/** Options from --config (if any) overridden by the given flags, flag names mapped to option names. */
export function optionsFromFlags(flags: Record<string, unknown>): { opts: Record<string, unknown>; ui: { progress: boolean; report: boolean } } {
  const { config, progress, report, shuffle, ...rest } = flags;
  const opts: Record<string, unknown> = config ? readConfigFile(String(config)) : {};
  for (const [k, v] of Object.entries(rest)) if (v !== undefined) opts[RENAME[k] ?? k] = v;
  // --lora-r / --lora-alpha / --lora-dropout / --lora-targets -> opts.lora (over a config file's lora object)
  const lora: Record<string, unknown> = { ...((opts.lora as Record<string, unknown> | undefined) ?? {}) };
  for (const [flag, key] of [['loraR', 'r'], ['loraAlpha', 'alpha'], ['loraDropout', 'dropout'], ['loraTargets', 'targetModules']] as const) {
    if (opts[flag] !== undefined) lora[key] = opts[flag];
    delete opts[flag];
  }
  if (Object.keys(lora).length > 0 || opts.lora !== undefined) opts.lora = lora;
  if (shuffle === false) opts.shuffle = false;
  return { opts, ui: { progress: progress !== false, report: report !== false } };
}

export function register(program: Command): void {
  const cmd = program.command('train').description('train a policy by DPO (or a listed relative) on a preference data file');
  addTrainingOptions(cmd, { reference: true, loss: true }).action(async (flags: Record<string, unknown>) => {
    const { opts, ui } = optionsFromFlags(flags);
    await runTraining(opts as unknown as DPOTrainerOptions, ui);
  });
}

/** The progress line's view of a metrics row (p: '' or 'eval_'): KTO's kl, else the reward accuracy (DPO family) or
 *  accuracy (reward models), then the margin. */
function quality(m: Record<string, number>, p: '' | 'eval_'): string {
  const first = `${p}kl` in m ? `kl ${fmt(m[`${p}kl`])}` : `acc ${fmt(m[`${p}rewards/accuracies`] ?? m[`${p}accuracy`], 3)}`;
  return `${first} margin ${fmt(m[`${p}rewards/margins`] ?? m[`${p}margin`])}`;
}

export async function runTraining(opts: DPOTrainerOptions, ui: { progress: boolean; report: boolean; label?: string; log?: (line: string) => void }): Promise<void> {
  const log = ui.log ?? ((l: string) => console.log(l));
  await using trainer = await DPOTrainer.create(opts);
  const total = trainer.state.totalSteps;
  const bar = new Progress(total, ui.label ?? 'train', ui.progress && process.stdout.isTTY === true, log);
  const ac = new AbortController();
  const onSig = () => ac.abort();
  process.once('SIGINT', onSig);
  try {
    for await (const m of trainer.train({ signal: ac.signal })) {
      if ('eval_loss' in m) {
        bar.update(trainer.state.step, `eval loss ${fmt(m.eval_loss)} ${quality(m, 'eval_')}`);
        continue;
      }
      bar.update(m.step, `loss ${fmt(m.loss)} ${quality(m, '')} ${fmt(m.tokens_per_second, 3)} tok/s`);
    }
  } finally {
    bar.stop();
    process.removeListener('SIGINT', onSig);
  }
  if (ui.report) log(`report: ${await writeReport(trainer.options.outputDir)}`);
  log(`done: ${trainer.state.step} steps; checkpoint in ${trainer.options.outputDir}`);
}
