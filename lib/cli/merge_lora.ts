// `torch-dpo merge-lora --base DIR --adapter DIR --out DIR`: base model + PEFT adapter -> merged Hugging Face model.
import type { Command } from 'commander';
import { writeMergedModel } from '../trainer/dpo_trainer';

export function register(program: Command): void {
  program
    .command('merge-lora')
    .description('fold a LoRA adapter (PEFT layout) into its base model: W + (alpha/r)·B·A, written as a Hugging Face model')
    .requiredOption('--base <dir>', 'base model directory (Hugging Face layout)')
    .requiredOption('--adapter <dir>', 'adapter directory (adapter_config.json + adapter_model.safetensors), e.g. a LoRA checkpoint')
    .requiredOption('--out <dir>', 'output directory of the merged model (tokenizer files are copied from --base)')
    .action(async (o: { base: string; adapter: string; out: string }) => {
      await writeMergedModel(o.base, o.adapter, o.out);
      console.log(`merged ${o.adapter} into ${o.base}: ${o.out}`);
    });
}
