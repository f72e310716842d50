#!/usr/bin/env node
// The torch-dpo command line. Each subcommand lives in lib/cli/<name>.ts and exports register(program).
import { Command } from 'commander';
import * as info from './cli/info';
import * as demo from './cli/demo';
import * as train from './cli/train';
import * as preferenceTrainers from './cli/preference_trainers';
import * as precompute from './cli/precompute';
import * as inspect from './cli/inspect';
import * as report from './cli/report';
import * as launch from './cli/launch';
import * as mergeLora from './cli/merge_lora';
import * as reward from './cli/reward';
import * as score from './cli/score';

export function buildProgram(): Command {
  const program = new Command();
  program.name('torch-dpo').description('Direct Preference Optimization on libtorch, from Node.js').showHelpAfterError();
  for (const cmd of [demo, train, preferenceTrainers, reward, score, precompute, inspect, report, launch, mergeLora, info]) cmd.register(program);
  return program;
}

if (require.main === module) {
  buildProgram()
    .parseAsync(process.argv)
    .catch((e: Error) => {
      console.error(`torch-dpo: ${e.message}`);
      process.exit(1);
    });
}
