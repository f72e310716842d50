import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writeReport, extractReportData, parseMetrics, summarize, chartJsBundle, MetricsRow } from '../../lib/report';

/** A synthetic DPO run: 40 logging steps, eval rows every 10 steps, one NaN loss (written as null). */
function syntheticRows(): MetricsRow[] {
  const rows: MetricsRow[] = [];
  for (let s = 1; s <= 40; s++) {
    const c = -40 - s * 0.1, r = -40 - s * 0.35;
    rows.push({
      step: s,
      epoch: s / 40,
      loss: s === 17 ? null : 0.6931471805599453 * Math.exp(-s / 25),
      'rewards/chosen': 0.01 * s,
      'rewards/rejected': -0.02 * s,
      'rewards/accuracies': Math.min(1, 0.5 + s / 60),
      'rewards/margins': 0.03 * s,
      'logps/chosen': c,
      'logps/rejected': r,
      learning_rate: 5e-7 * Math.min(1, s / 5) * (1 - s / 41),
      grad_norm: 10 / s + 0.1,
      tokens_per_second: 1234.5 + s,
    });
    if (s % 10 === 0) rows.push({ step: s, eval_loss: 0.7 * Math.exp(-s / 30), 'eval_rewards/accuracies': 0.5 + s / 100, 'eval_rewards/margins': 0.025 * s });
  }
  return rows;
}

function runDir(rows: MetricsRow[], name = 'run'): string {
  const d = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tdpo-report-')), name);
  fs.mkdirSync(d);
  fs.writeFileSync(path.join(d, 'metrics.jsonl'), rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  return d;
}

test('the report embeds exactly the input metrics and eval data', async (t) => {
  const rows = syntheticRows();
  const dir = runDir(rows);
  const evalObj = { eval_loss: 0.51234, 'eval_rewards/accuracies': 0.875, samples: 64, nested: { a: 1 } };
  fs.writeFileSync(path.join(dir, 'eval.json'), JSON.stringify(evalObj));
  const out = await writeReport(dir);
  t.is(out, path.join(dir, 'report.html'));
  const html = fs.readFileSync(out, 'utf8');
  const data = extractReportData(html);
  t.deepEqual(data.metrics, rows, 'embedded metrics equal the generated rows bit for bit');
  t.deepEqual(data.eval, evalObj);
  t.is(data.runName, 'run');
  // Every chart has a canvas (all keys were logged).
  for (const id of ['loss', 'margins', 'logps', 'rewards', 'lr', 'throughput']) t.true(html.includes(`<canvas id="chart-${id}"`), id);
  t.regex(html, /data-charts-expected="6"/);
  // The eval.json values appear in the page, flattened.
  t.regex(html, /<th>nested\.a<\/th><td>1<\/td>/);
  t.regex(html, /<th>eval_rewards\/accuracies<\/th><td>0\.875<\/td>/);
});

test('the page is self-contained: Chart.js inlined, nothing loaded from the network', async (t) => {
  const dir = runDir(syntheticRows());
  const html = fs.readFileSync(await writeReport(dir, path.join(dir, 'custom.html')), 'utf8');
  const bundle = chartJsBundle();
  t.true(bundle.length > 100_000);
  t.regex(bundle.slice(0, 200), /Chart\.js v4/);
  t.true(html.includes(`<script>${bundle}</script>`), 'the UMD bundle is inlined verbatim');
  t.notRegex(html, /<script[^>]+src=/i);
  t.notRegex(html, /<link[^>]+href=/i);
  t.notRegex(html.replace(bundle, ''), /https?:\/\/(?!www\.chartjs\.org)/, 'no URLs outside the bundle header');
  t.true(html.includes("body.setAttribute('data-charts-rendered'"));
});

test('the summary table is computed from the rows', (t) => {
  const rows = syntheticRows();
  const s = Object.fromEntries(summarize(rows));
  t.is(s['last step'], '40');
  t.is(s['logged lines'], '44');
  const losses = rows.map((r) => r.loss).filter((x): x is number => typeof x === 'number');
  t.is(losses.length, 39, 'the null loss at step 17 is skipped');
  t.is(s['first train loss'], String(Number((0.6931471805599453 * Math.exp(-1 / 25)).toPrecision(6))));
  t.is(s['last train loss'], String(Number((0.6931471805599453 * Math.exp(-40 / 25)).toPrecision(6))));
  t.is(s['last eval loss'], String(Number((0.7 * Math.exp(-40 / 30)).toPrecision(6))));
  t.is(s['last eval reward accuracy'], '0.9');
  t.is(s['mean tokens/s'], String(Number((1234.5 + 20.5).toPrecision(6))));
  t.is(s['max grad norm'], '10.1');
  t.is(s['last learning rate'], (5e-7 * (1 - 40 / 41)).toExponential(4));
});

test('charts whose metrics were never logged are listed as not logged', async (t) => {
  const rows: MetricsRow[] = [{ step: 1, loss: 0.7 }, { step: 2, loss: 0.6 }];
  const html = fs.readFileSync(await writeReport(runDir(rows)), 'utf8');
  t.regex(html, /data-charts-expected="1"/);
  t.true(html.includes('<canvas id="chart-loss"'));
  t.false(html.includes('<canvas id="chart-lr"'));
  t.regex(html, /Not logged in this run: .*Learning rate/);
});

test('markup in names and values is escaped and still round-trips', async (t) => {
  const rows: MetricsRow[] = [{ step: 1, loss: 0.5, note: '</script><script>alert(1)</script> <!-- \u2028' }];
  const dir = runDir(rows, 'run<b>&"x');
  const html = fs.readFileSync(await writeReport(dir), 'utf8');
  t.false(html.includes('</script><script>alert(1)'));
  t.false(html.includes('<b>&"x'));
  t.true(html.includes('run&lt;b&gt;&amp;&quot;x'));
  t.deepEqual(extractReportData(html).metrics, rows);
});

test('malformed metrics lines are reported as file:line with the field', async (t) => {
  const f = '/runs/x/metrics.jsonl';
  t.throws(() => parseMetrics('{"step":1,"loss":0.5}\n\n{"step":2,"loss":0.4\n', f), { message: /^\/runs\/x\/metrics\.jsonl:3: expected one JSON object per line but the line is not valid JSON/ });
  t.throws(() => parseMetrics('{"step":1,"loss":NaN}\n', f), { message: /metrics\.jsonl:1: .*NaN\/Infinity are not JSON; write null/ });
  t.throws(() => parseMetrics('{"step":1}\n[1,2]\n', f), { message: /metrics\.jsonl:2: Expected a JSON object for the line but received an array of length 2/ });
  t.throws(() => parseMetrics('{"loss":0.5}\n', f), { message: /metrics\.jsonl:1: Expected a non-negative integer for field "step" but received undefined/ });
  t.throws(() => parseMetrics('{"step":1.5}\n', f), { message: /field "step" but received 1\.5/ });
  t.throws(() => parseMetrics('{"step":1}\n{"step":2,"rewards/margins":"big"}\n', f), { message: /metrics\.jsonl:2: Expected a number or null for field "rewards\/margins" but received "big"/ });
  t.throws(() => parseMetrics('{"step":3,"eval_loss":true}\n', f), { message: /:1: .*field "eval_loss" but received true/ });
  t.deepEqual(parseMetrics('{"step":0,"loss":null,"custom":"ok"}\r\n', f), [{ step: 0, loss: null, custom: 'ok' }]);

  const dir = runDir([{ step: 1, loss: 0.5 }]);
  fs.appendFileSync(path.join(dir, 'metrics.jsonl'), '{"step":2,"loss":"x"}\n');
  await t.throwsAsync(writeReport(dir), { message: new RegExp(`${path.join(dir, 'metrics.jsonl')}:2: .*"loss"`) });
  t.false(fs.existsSync(path.join(dir, 'report.html')), 'no report is written from bad input');
});

test('missing metrics, empty metrics and a bad eval.json are clear errors naming the file', async (t) => {
  const empty = runDir([]);
  fs.writeFileSync(path.join(empty, 'metrics.jsonl'), '\n\n');
  await t.throwsAsync(writeReport(empty), { message: new RegExp(`at least one metrics line in ${path.join(empty, 'metrics.jsonl')}`) });
  fs.rmSync(path.join(empty, 'metrics.jsonl'));
  await t.throwsAsync(writeReport(empty), { message: new RegExp(`Cannot read the metrics file ${path.join(empty, 'metrics.jsonl')}`) });
  const dir = runDir([{ step: 1, loss: 0.5 }]);
  fs.writeFileSync(path.join(dir, 'eval.json'), '{"eval_loss": ');
  await t.throwsAsync(writeReport(dir), { message: new RegExp(`${path.join(dir, 'eval.json')}: not valid JSON`) });
  fs.writeFileSync(path.join(dir, 'eval.json'), '[1]');
  await t.throwsAsync(writeReport(dir), { message: /eval\.json: Expected a JSON object for the file but received an array/ });
});

test('summarize handles 200k rows (no argument-spread overflow)', (t) => {
  const rows: MetricsRow[] = Array.from({ length: 200_000 }, (_, i) => ({ step: i + 1, loss: 1 / (i + 1), grad_norm: i === 123_456 ? 99 : 1 }));
  const s = Object.fromEntries(summarize(rows));
  t.is(s['last step'], '200000');
  t.is(s['min train loss'], (1 / 200_000).toExponential(4));
  t.is(s['max grad norm'], '99');
});
