// The README's demo at a smaller scale: DPO must raise the known ground-truth reward over the reference.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runDemo } from '../../lib/demo/run_demo';
import { sentimentReward } from '../../lib/demo/sentiment_task';
import { tmpDir } from './helpers/fixtures';

test('sentiment reward is (#positive - #negative) / #words', (t) => {
  t.is(sentimentReward('the acting was great and the music was awful'), 0);
  t.is(sentimentReward('great good bad'), 1 / 3);
  t.is(sentimentReward('<eos>'), 0);
  t.is(sentimentReward('it was superb'), 1 / 3);
});

test('the demo raises the ground-truth reward of the policy over the reference', async (t) => {
  const out = path.join(tmpDir('demo'), 'run');
  const lines: string[] = [];
  const { rows } = await runDemo({ out, pairs: 192, progress: false, log: (l) => lines.push(l) });
  t.log(lines.slice(-4).join('\n'));
  for (const r of rows) {
    t.true(r.policy_reward > r.reference_reward + 0.05, `temperature ${r.temperature}: policy ${r.policy_reward} vs reference ${r.reference_reward}`);
    t.true(r.win_rate > 0.6, `win rate ${r.win_rate}`);
    t.true(r.kl > 0, `KL ${r.kl}`);
  }
  t.true(fs.existsSync(path.join(out, 'dpo', 'report.html')));
  const metrics = fs.readFileSync(path.join(out, 'dpo', 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  t.true(metrics.at(-1)['rewards/margins'] > metrics[0]['rewards/margins'], 'reward margins grow during DPO');
});
