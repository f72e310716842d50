// `torch-dpo train`: DPO training from a config file and/or flags (flags win).
import type { Command } from 'commander';
import { DPOTrainer } from '../trainer/dpo_trainer';
import { DPOTrainerOptions } from '../trainer/options';
import { writeReport } from '../report';
import { fmt, parseInteger, parseList, parseNumber, parseNumberList, Progress, readConfigFile } from './common';

// flag -> option name (flags not listed map by camelCase of the flag)
const RENAME: Record<string, string> = { output: 'outputDir', loss: 'lossType', batchSize: 'perDeviceTrainBatchSize' };

export function register(program: Command): void {
  program
    .command('train')
    .description('train a policy by DPO (or a listed relative) on a preference data file')
    .option('--config <file>', 'options as JSON or YAML (camelCase or TRL snake_case keys); flags override it')
    .option('--policy <dir>', 'policy model directory (Hugging Face layout)')
    .option('--reference <dir>', 'reference model directory')
    .option('--ref-cache <dir>', 'reference log-prob cache (from `precompute`, or filled while training)')
    .option('--data <file>', 'training data (.jsonl or .parquet)')
    .option('--eval-data <file>', 'evaluation data')
    .option('--output <dir>', 'output directory (checkpoints, metrics.jsonl, report.html)')
    .option('--loss <types>', 'loss type(s), comma separated (sigmoid, ipo, hinge, robust, sft, ...)', parseList)
    .option('--loss-weights <ws>', 'weights of the loss types, comma separated', parseNumberList)
    .option('--beta <n>', 'β (default 0.1)', parseNumber)
    .option('--label-smoothing <n>', 'ε of cDPO (default 0)', parseNumber)
    .option('--reference-free', 'treat the reference as uniform')
    .option('--learning-rate <n>', 'peak learning rate (default 1e-6)', parseNumber)
    .option('--batch-size <n>', 'pairs per micro-batch (default 8)', parseInteger)
    .option('--gradient-accumulation-steps <n>', 'micro-batches per step (default 1)', parseInteger)
    .option('--max-length <n>', 'longest prompt+completion (default 1024)', parseInteger)
    .option('--max-prompt-length <n>', 'longest prompt (default 512)', parseInteger)
    .option('--truncation-mode <m>', 'keep_end | keep_start')
    .option('--overlong-policy <p>', 'truncate | drop | error')
    .option('--warmup-ratio <n>', 'fraction of steps of warmup (default 0)', parseNumber)
    .option('--lr-scheduler-type <t>', 'linear | cosine | constant')
    .option('--weight-decay <n>', 'weight decay (default 0)', parseNumber)
    .option('--max-grad-norm <n>', 'gradient clipping, 0 = off (default 1)', parseNumber)
    .option('--num-train-epochs <n>', 'epochs (default 1)', parseNumber)
    .option('--max-steps <n>', 'optimizer steps; overrides epochs', parseInteger)
    .option('--seed <n>', 'seed (default 42)', parseInteger)
    .option('--no-shuffle', 'keep the file order')
    .option('--shuffle-buffer-size <n>', 'shuffle buffer in examples (default 10000)', parseInteger)
    .option('--optimizer <o>', 'adamw | sgd')
    .option('--adam-beta1 <n>', 'AdamW β1', parseNumber)
    .option('--adam-beta2 <n>', 'AdamW β2', parseNumber)
    .option('--adam-epsilon <n>', 'AdamW ε', parseNumber)
    .option('--dtype <d>', 'float32 | bfloat16 | float16')
    .option('--device <d>', 'cpu | cuda | cuda:N')
    .option('--logging-steps <n>', 'log every N steps (default 10)', parseInteger)
    .option('--eval-steps <n>', 'evaluate every N steps', parseInteger)
    .option('--save-steps <n>', 'checkpoint every N steps (default 500)', parseInteger)
    .option('--resume [checkpoint]', 'resume from the latest checkpoint in --output, or the given one')
    .option('--max-non-finite-steps <n>', 'non-finite steps tolerated (default 3)', parseInteger)
    .option('--chunk-rows <n>', 'tokens per lm-head chunk (default 1024)', parseInteger)
    .option('--no-progress', 'plain log lines even on a terminal')
    .option('--no-report', 'do not write report.html at the end')
    .action(async (flags: Record<string, unknown>) => {
      const { config, progress, report, shuffle, ...rest } = flags;
      const opts: Record<string, unknown> = config ? readConfigFile(String(config)) : {};
      for (const [k, v] of Object.entries(rest)) if (v !== undefined) opts[RENAME[k] ?? k] = v;
      if (shuffle === false) opts.shuffle = false;
      await runTraining(opts as unknown as DPOTrainerOptions, { progress: progress !== false, report: report !== false });
    });
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
        bar.update(trainer.state.step, `eval loss ${fmt(m.eval_loss)} acc ${fmt(m['eval_rewards/accuracies'], 3)}`);
        continue;
      }
      bar.update(m.step, `loss ${fmt(m.loss)} acc ${fmt(m['rewards/accuracies'], 3)} margin ${fmt(m['rewards/margins'])} ${fmt(m.tokens_per_second, 3)} tok/s`);
    }
  } finally {
    bar.stop();
    process.removeListener('SIGINT', onSig);
  }
  if (ui.report) log(`report: ${await writeReport(trainer.options.outputDir)}`);
  log(`done: ${trainer.state.step} steps; checkpoint in ${trainer.options.outputDir}`);
}
