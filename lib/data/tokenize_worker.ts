// Worker thread for tokenizeExamplesParallel: loads the tokenizer from its directory once, then tokenizes chunks of
// records with exactly the sequential code path (tokenizeExamples) and posts the examples and stats back.

import { parentPort, workerData } from 'node:worker_threads';
import { Tokenizer } from '../tokenizer';
import type { SourceRecord, TokenizedExample } from './formats';
import { TokenizeOptions, newStats, tokenizeExamples } from './tokenize';

export interface WorkerRequest {
  seq: number;
  records: SourceRecord[];
}

export interface WorkerReply {
  seq: number;
  examples: TokenizedExample[];
  stats: { examples: number; truncated: number; dropped: number; skippedIdentical: number };
  error?: string;
}

async function main(): Promise<void> {
  const { dir, opts } = workerData as { dir: string; opts: TokenizeOptions };
  const port = parentPort!;
  let tok: Tokenizer;
  try {
    tok = await Tokenizer.fromDir(dir);
  } catch (e) {
    port.postMessage({ seq: -1, examples: [], stats: newStats(), error: (e as Error).message } satisfies WorkerReply);
    return;
  }
  port.on('message', async (req: WorkerRequest) => {
    const stats = newStats();
    const examples: TokenizedExample[] = [];
    let error: string | undefined;
    try {
      for await (const ex of tokenizeExamples(req.records, tok, { ...opts, stats })) examples.push(ex);
    } catch (e) {
      error = (e as Error).message;
    }
    port.postMessage({ seq: req.seq, examples, stats, error } satisfies WorkerReply);
  });
  port.postMessage({ seq: -2, examples: [], stats: newStats() } satisfies WorkerReply); // ready
}

void main();
