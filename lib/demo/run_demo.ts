// The end-to-end demo: a tiny Llama-shaped model learns to write positive reviews by DPO, on 2 CPU cores in a few
// minutes, with no downloads. Steps: random init from demo/model (bundled config + tokenizer) -> brief SFT on
// mixed-sentiment reviews -> sample pairs from the SFT model and rank them by the known reward -> cache reference
// log-probs -> DPO -> sample policy and reference at several temperatures: reward, win rate, KL -> report.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Model } from '../model';
import { Tokenizer } from '../tokenizer';
import { mulberry32 } from '../data/shuffle';
import { precomputeReference } from '../trainer/precompute';
import { runTraining } from '../cli/train';
import { writeReport } from '../report';
import { promptText, sentimentReward, sftRecords, TOPICS } from './sentiment_task';

export interface DemoOptions {
  /** Output folder (default runs/demo); emptied first. */
  out?: string;
  /** Seed of everything (default 7). */
  seed?: number;
  /** Show progress bars on a terminal (default true). */
  progress?: boolean;
  /** Scale of the run: pairs sampled for DPO (default 384). */
  pairs?: number;
  log?: (line: string) => void;
}

export interface DemoEvalRow {
  temperature: number;
  policy_reward: number;
  reference_reward: number;
  win_rate: number;
  kl: number;
}

const MODEL_FILES = ['tokenizer.json', 'tokenizer_config.json'];
const root = path.resolve(__dirname, '..', '..', '..');

function writeJsonl(file: string, rows: unknown[]): void {
  fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
}

function latestCheckpoint(dir: string): string {
  return path.join(dir, fs.readFileSync(path.join(dir, 'latest'), 'utf8').trim());
}

export async function runDemo(opts: DemoOptions = {}): Promise<{ rows: DemoEvalRow[]; out: string }> {
  const out = path.resolve(opts.out ?? 'runs/demo');
  const seed = opts.seed ?? 7;
  const log = opts.log ?? ((l: string) => console.log(l));
  const progress = opts.progress ?? true;
  const nPairs = opts.pairs ?? 384;
  fs.rmSync(out, { recursive: true, force: true });
  fs.mkdirSync(out, { recursive: true });
  const modelDir = path.join(root, 'demo', 'model');
  const config = JSON.parse(fs.readFileSync(path.join(modelDir, 'config.json'), 'utf8'));
  const t0 = Date.now();

  // 1. random init, saved as a Hugging Face directory
  const initDir = path.join(out, 'init');
  {
    await using m = await Model.create(config, { seed });
    await m.save(initDir);
  }
  for (const f of MODEL_FILES) fs.copyFileSync(path.join(modelDir, f), path.join(initDir, f));
  log(`[1/5] tiny Llama (${config.num_hidden_layers} layers, hidden ${config.hidden_size}, vocab ${config.vocab_size}) initialised in ${initDir}`);

  // 2. SFT on mixed-sentiment reviews (the sft loss reads only `chosen`)
  const sftData = path.join(out, 'sft.jsonl');
  writeJsonl(sftData, sftRecords(768, seed));
  await runTraining(
    { policy: initDir, data: sftData, outputDir: path.join(out, 'sft'), lossType: 'sft', referenceFree: true, learningRate: 3e-3, perDeviceTrainBatchSize: 16, numTrainEpochs: 3, lrSchedulerType: 'cosine', warmupRatio: 0.05, maxGradNorm: 1, loggingSteps: 10, saveSteps: 0, seed },
    { progress, report: false, label: '[2/5] sft', log },
  );
  const sftDir = latestCheckpoint(path.join(out, 'sft'));

  // 3. preference pairs sampled from the SFT model, ranked by the ground-truth reward
  const tok = await Tokenizer.fromDir(modelDir);
  const rand = mulberry32(seed + 1);
  const pairs: Array<{ prompt: string; chosen: string; rejected: string }> = [];
  {
    await using sft = await Model.load(sftDir);
    let round = 0;
    while (pairs.length < nPairs && round < 20) {
      const prompts = Array.from({ length: 64 }, () => promptText(TOPICS[Math.floor(rand() * TOPICS.length)]));
      const ids = prompts.flatMap((p) => [tok.encode(p), tok.encode(p)]);
      const gen = await sft.generate(ids, { maxNewTokens: 24, temperature: 1.0, seed: seed * 1000 + round++ });
      for (let i = 0; i < prompts.length && pairs.length < nPairs; i++) {
        const a = tok.decode(gen[2 * i], { skipSpecialTokens: true }).trim();
        const b = tok.decode(gen[2 * i + 1], { skipSpecialTokens: true }).trim();
        const ra = sentimentReward(a), rb = sentimentReward(b);
        if (ra === rb || a.length === 0 || b.length === 0) continue;
        pairs.push(ra > rb ? { prompt: prompts[i], chosen: a, rejected: b } : { prompt: prompts[i], chosen: b, rejected: a });
      }
    }
  }
  const pairData = path.join(out, 'pairs.jsonl');
  writeJsonl(pairData, pairs);
  log(`[3/5] ${pairs.length} preference pairs sampled from the SFT model and ranked by the sentiment reward -> ${pairData}`);

  // 4. reference log-probs cached once, then DPO without the reference model in memory
  const cache = path.join(out, 'ref-cache');
  const pc = await precomputeReference({ reference: sftDir, data: pairData, cache, batchSize: 32 });
  log(`[4/5] reference log-probs of ${pc.computed} sequences cached in ${cache}`);
  const dpoOut = path.join(out, 'dpo');
  await runTraining(
    { policy: sftDir, refCache: cache, data: pairData, outputDir: dpoOut, beta: 0.1, learningRate: 1e-3, perDeviceTrainBatchSize: 16, numTrainEpochs: 3, lrSchedulerType: 'linear', warmupRatio: 0.1, maxGradNorm: 1, loggingSteps: 5, saveSteps: 0, seed },
    { progress, report: false, label: '[4/5] dpo', log },
  );
  const policyDir = latestCheckpoint(dpoOut);

  // 5. evaluation: samples from policy and reference; reward, win rate, KL(policy || reference) per token sequence
  const rows: DemoEvalRow[] = [];
  {
    await using policy = await Model.load(policyDir);
    await using reference = await Model.load(sftDir);
    const evalRand = mulberry32(seed + 2);
    const prompts = Array.from({ length: 128 }, () => tok.encode(promptText(TOPICS[Math.floor(evalRand() * TOPICS.length)])));
    for (const temperature of [0.7, 1.0]) {
      const gp = await policy.generate(prompts, { maxNewTokens: 24, temperature, seed: seed + 11 });
      const gr = await reference.generate(prompts, { maxNewTokens: 24, temperature, seed: seed + 11 });
      const rp = gp.map((g) => sentimentReward(tok.decode(g, { skipSpecialTokens: true })));
      const rr = gr.map((g) => sentimentReward(tok.decode(g, { skipSpecialTokens: true })));
      const seqs = prompts.map((p, i) => p.concat(gp[i]));
      const lpP = await policy.tokenLogps(seqs);
      const lpR = await reference.tokenLogps(seqs);
      let kl = 0;
      prompts.forEach((p, i) => {
        for (let t = p.length - 1; t < lpP[i].length; t++) kl += lpP[i][t] - lpR[i][t];
      });
      const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
      const wins = rp.reduce((w, r, i) => w + (r > rr[i] ? 1 : r === rr[i] ? 0.5 : 0), 0);
      rows.push({ temperature, policy_reward: mean(rp), reference_reward: mean(rr), win_rate: wins / prompts.length, kl: kl / prompts.length });
    }
    const example = await policy.generate([prompts[0]], { maxNewTokens: 24, temperature: 0 });
    const exampleRef = await reference.generate([prompts[0]], { maxNewTokens: 24, temperature: 0 });
    log(`[5/5] greedy, "${tok.decode(prompts[0], { skipSpecialTokens: true })}"\n      reference: ${tok.decode(exampleRef[0], { skipSpecialTokens: true })}\n      policy:    ${tok.decode(example[0], { skipSpecialTokens: true })}`);
  }
  fs.writeFileSync(path.join(dpoOut, 'eval.json'), JSON.stringify({ ground_truth_reward: 'sentiment: (#positive - #negative) / #words', rows }, null, 2));
  const report = await writeReport(dpoOut);
  log('');
  log('temperature | reward policy | reward reference | win rate policy>reference | KL(policy||ref) nats/seq');
  for (const r of rows) log(`${r.temperature.toFixed(1).padStart(11)} | ${r.policy_reward.toFixed(3).padStart(13)} | ${r.reference_reward.toFixed(3).padStart(16)} | ${r.win_rate.toFixed(3).padStart(25)} | ${r.kl.toFixed(3).padStart(8)}`);
  log(`report: ${report}   (total ${((Date.now() - t0) / 1000).toFixed(0)} s)`);
  return { rows, out };
}
