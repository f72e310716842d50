// A static, self-contained HTML report of a training run: reads runDir/metrics.jsonl (one JSON object per logging
// step, TRL metric names) and the optional runDir/eval.json, and writes one page with Chart.js inlined (no network).

import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { ValidationError, describe } from './validate';
import { writeFileAtomic } from './fs_atomic';

/** One parsed line of metrics.jsonl. Values are kept exactly as read (null = not logged / non-finite). */
export type MetricsRow = { step: number } & Record<string, unknown>;

/** Keys that, when present, must be a number (or null, which JSON.stringify writes for NaN/Infinity). */
const NUMERIC_KEYS = [
  'epoch', 'loss', 'rewards/chosen', 'rewards/rejected', 'rewards/accuracies', 'rewards/margins', 'logps/chosen', 'logps/rejected',
  'logits/chosen', 'logits/rejected', 'learning_rate', 'grad_norm', 'tokens_per_second', 'kl', 'log_odds_ratio', 'log_odds_chosen', 'nll_loss',
];

function isNumericKey(k: string): boolean {
  return NUMERIC_KEYS.includes(k) || (k.startsWith('eval_') && NUMERIC_KEYS.includes(k.slice(5))) || k === 'eval_loss';
}

/** Parses metrics.jsonl; every malformed line is reported as file:line with the field and value. */
export function parseMetrics(text: string, file: string): MetricsRow[] {
  const rows: MetricsRow[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '') continue;
    const where = `${file}:${i + 1}`;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      const hint = /\bNaN\b|\bInfinity\b/.test(line) ? ' (NaN/Infinity are not JSON; write null)' : '';
      throw new ValidationError(`${where}: expected one JSON object per line but the line is not valid JSON${hint}: ${(e as Error).message}`);
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ValidationError(`${where}: Expected a JSON object for the line but received ${describe(v)}`);
    const o = v as Record<string, unknown>;
    if (typeof o.step !== 'number' || !Number.isInteger(o.step) || o.step < 0) {
      throw new ValidationError(`${where}: Expected a non-negative integer for field "step" but received ${describe(o.step)}`);
    }
    for (const [k, x] of Object.entries(o)) {
      if (isNumericKey(k) && x !== null && (typeof x !== 'number' || !Number.isFinite(x))) {
        throw new ValidationError(`${where}: Expected a number or null for field "${k}" but received ${describe(x)}`);
      }
    }
    rows.push(o as MetricsRow);
  }
  return rows;
}

export async function readMetrics(file: string): Promise<MetricsRow[]> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (e) {
    throw new ValidationError(`Cannot read the metrics file ${file}: ${(e as Error).message}`);
  }
  const rows = parseMetrics(text, file);
  if (rows.length === 0) throw new ValidationError(`Expected at least one metrics line in ${file} but the file has none`);
  return rows;
}

async function readEval(file: string): Promise<Record<string, unknown> | null> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new ValidationError(`Cannot read ${file}: ${(e as Error).message}`);
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new ValidationError(`${file}: not valid JSON: ${(e as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ValidationError(`${file}: Expected a JSON object for the file but received ${describe(v)}`);
  return v as Record<string, unknown>;
}

// ---------------------------------------------------------------------------------------------------------------
// Charts: each is a list of series (metric key -> line); a chart whose series were never logged is shown as "no data".

export interface ChartSpec {
  id: string;
  title: string;
  series: Array<{ key: string; label: string; axis?: 'y' | 'y1'; dashed?: boolean }>;
  y?: { title: string; log?: boolean };
  y1?: { title: string; min?: number; max?: number };
}

export const REPORT_CHARTS: ChartSpec[] = [
  { id: 'loss', title: 'Loss', y: { title: 'loss' }, series: [{ key: 'loss', label: 'train loss' }, { key: 'eval_loss', label: 'eval loss', dashed: true }] },
  {
    id: 'margins', title: 'Reward margins and accuracy', y: { title: 'margin' }, y1: { title: 'accuracy', min: 0, max: 1 },
    series: [
      { key: 'rewards/margins', label: 'train margin' },
      { key: 'eval_rewards/margins', label: 'eval margin', dashed: true },
      { key: 'rewards/accuracies', label: 'train accuracy', axis: 'y1' },
      { key: 'eval_rewards/accuracies', label: 'eval accuracy', axis: 'y1', dashed: true },
    ],
  },
  {
    id: 'logps', title: 'Log-probs: chosen vs rejected', y: { title: 'log-prob' },
    series: [
      { key: 'logps/chosen', label: 'chosen' },
      { key: 'logps/rejected', label: 'rejected' },
      { key: 'eval_logps/chosen', label: 'eval chosen', dashed: true },
      { key: 'eval_logps/rejected', label: 'eval rejected', dashed: true },
    ],
  },
  { id: 'rewards', title: 'Rewards: chosen vs rejected', y: { title: 'reward' }, series: [{ key: 'rewards/chosen', label: 'chosen' }, { key: 'rewards/rejected', label: 'rejected' }, { key: 'kl', label: 'KL estimate z0 (KTO)', dashed: true }] },
  { id: 'lr', title: 'Learning rate', y: { title: 'learning rate' }, series: [{ key: 'learning_rate', label: 'learning rate' }] },
  {
    id: 'throughput', title: 'Gradient norm and throughput', y: { title: 'grad norm' }, y1: { title: 'tokens/s' },
    series: [{ key: 'grad_norm', label: 'grad norm' }, { key: 'tokens_per_second', label: 'tokens/s', axis: 'y1' }],
  },
];

// ---------------------------------------------------------------------------------------------------------------
// Summary

function lastOf(rows: MetricsRow[], key: string): number | undefined {
  for (let i = rows.length - 1; i >= 0; i--) if (typeof rows[i][key] === 'number') return rows[i][key] as number;
  return undefined;
}

function valuesOf(rows: MetricsRow[], key: string): number[] {
  return rows.map((r) => r[key]).filter((x): x is number => typeof x === 'number');
}

function fmt(x: unknown): string {
  if (x === undefined) return '—';
  if (typeof x === 'number') {
    if (Number.isInteger(x) && Math.abs(x) < 1e15) return String(x);
    const a = Math.abs(x);
    return a !== 0 && (a < 1e-3 || a >= 1e6) ? x.toExponential(4) : Number(x.toPrecision(6)).toString();
  }
  if (typeof x === 'string') return x;
  return JSON.stringify(x);
}

export function summarize(rows: MetricsRow[]): Array<[string, string]> {
  const loss = valuesOf(rows, 'loss');
  const tps = valuesOf(rows, 'tokens_per_second');
  const gn = valuesOf(rows, 'grad_norm');
  // Loops rather than spreading into Math.max: 100k+ arguments overflow the call stack.
  const maxOf = (xs: number[]) => xs.reduce((m, x) => (x > m ? x : m), -Infinity);
  const minOf = (xs: number[]) => xs.reduce((m, x) => (x < m ? x : m), Infinity);
  const out: Array<[string, string]> = [
    ['logged lines', String(rows.length)],
    ['last step', String(maxOf(rows.map((r) => r.step)))],
    ['last epoch', fmt(lastOf(rows, 'epoch'))],
    ['first train loss', fmt(loss[0])],
    ['last train loss', fmt(loss[loss.length - 1])],
    ['min train loss', loss.length ? fmt(minOf(loss)) : '—'],
    ['last eval loss', fmt(lastOf(rows, 'eval_loss'))],
    ['last reward margin', fmt(lastOf(rows, 'rewards/margins'))],
    ['last reward accuracy', fmt(lastOf(rows, 'rewards/accuracies'))],
    ['last eval reward accuracy', fmt(lastOf(rows, 'eval_rewards/accuracies'))],
    ['last learning rate', fmt(lastOf(rows, 'learning_rate'))],
    ['mean tokens/s', tps.length ? fmt(tps.reduce((a, b) => a + b, 0) / tps.length) : '—'],
    ['max grad norm', gn.length ? fmt(maxOf(gn)) : '—'],
  ];
  const skipped = lastOf(rows, 'skipped_steps');
  if (skipped !== undefined) out.push(['skipped (non-finite) steps', fmt(skipped)]);
  return out;
}

function flatten(obj: Record<string, unknown>, prefix = ''): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const [k, v] of Object.entries(obj)) {
    if (typeof v === 'object' && v !== null && !Array.isArray(v)) out.push(...flatten(v as Record<string, unknown>, prefix + k + '.'));
    else out.push([prefix + k, fmt(v)]);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// HTML

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/** JSON for a <script type="application/json"> element: '<' escaped so no "</script>" or "<!--" can end it early. */
function scriptJson(v: unknown): string {
  return JSON.stringify(v).replace(/</g, '\\u003c').replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029');
}

let chartJsSource: string | undefined;
/** The Chart.js UMD bundle from node_modules (inlined so the page needs no network). */
export function chartJsBundle(): string {
  if (chartJsSource !== undefined) return chartJsSource;
  const dist = path.dirname(require.resolve('chart.js'));
  for (const name of ['chart.umd.min.js', 'chart.umd.js']) {
    const f = path.join(dist, name);
    if (fs.existsSync(f)) {
      const src = fs.readFileSync(f, 'utf8');
      if (/<\/script/i.test(src)) throw new Error(`${f} contains "</script" and cannot be inlined`);
      chartJsSource = src;
      return src;
    }
  }
  throw new Error(`Chart.js UMD bundle not found in ${dist} (expected chart.umd.min.js or chart.umd.js)`);
}

/** Browser-side code (plain ES5-ish so it runs in any Chromium); reads the two JSON blocks and draws every chart. */
const PAGE_SCRIPT = String.raw`
(function () {
  var body = document.body;
  var errors = window.__tdpoErrors || [];
  var palette = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b'];
  // Small magnitudes (learning rates) as 1.5e-7 instead of Chart.js' fixed-point default.
  function tick(v, i, ticks) {
    var m = 0;
    ticks.forEach(function (t) { m = Math.max(m, Math.abs(t.value)); });
    if (m > 0 && m < 1e-3) return v === 0 ? '0' : Number(v).toExponential(1);
    return Chart.Ticks.formatters.numeric.call(this, v, i, ticks);
  }
  try {
    var data = JSON.parse(document.getElementById('tdpo-data').textContent);
    var charts = JSON.parse(document.getElementById('tdpo-charts').textContent);
    var rendered = 0;
    charts.forEach(function (spec) {
      var canvas = document.getElementById('chart-' + spec.id);
      if (!canvas) return;
      var datasets = spec.series.map(function (s, i) {
        var pts = [];
        data.metrics.forEach(function (r) { if (typeof r[s.key] === 'number') pts.push({ x: r.step, y: r[s.key] }); });
        pts.sort(function (a, b) { return a.x - b.x; });
        return {
          label: s.label, data: pts, yAxisID: s.axis || 'y', borderColor: palette[i % palette.length],
          backgroundColor: palette[i % palette.length], borderDash: s.dashed ? [6, 4] : [], pointRadius: pts.length > 60 ? 0 : 2,
          borderWidth: 1.5, tension: 0, spanGaps: true
        };
      }).filter(function (d) { return d.data.length > 0; });
      var scales = {
        x: { type: 'linear', title: { display: true, text: 'step' } },
        y: { type: 'linear', position: 'left', title: { display: true, text: spec.y ? spec.y.title : '' }, ticks: { callback: tick } }
      };
      if (spec.y1 && datasets.some(function (d) { return d.yAxisID === 'y1'; })) {
        scales.y1 = { type: 'linear', position: 'right', grid: { drawOnChartArea: false }, title: { display: true, text: spec.y1.title }, ticks: { callback: tick } };
        if (spec.y1.min !== undefined) scales.y1.min = spec.y1.min;
        if (spec.y1.max !== undefined) scales.y1.max = spec.y1.max;
      }
      var chart = new Chart(canvas.getContext('2d'), {
        type: 'line', data: { datasets: datasets },
        options: {
          animation: false, responsive: true, maintainAspectRatio: false, parsing: false,
          interaction: { mode: 'nearest', intersect: false },
          plugins: { title: { display: true, text: spec.title }, legend: { position: 'bottom' } },
          scales: scales
        }
      });
      if (chart && chart.chartArea) rendered++;
    });
    body.setAttribute('data-charts-rendered', String(rendered));
    document.title = document.title + ' (rendered ' + rendered + ' charts)';
  } catch (e) {
    errors.push(String(e && e.stack || e));
    document.documentElement.setAttribute('data-js-errors', errors.join(' | '));
  }
})();
`;

export interface ReportData {
  runName: string;
  generated: string;
  metrics: MetricsRow[];
  eval: Record<string, unknown> | null;
}

/** The whole page as a string. */
export function renderReportHtml(data: ReportData): string {
  const present = (key: string) => data.metrics.some((r) => typeof r[key] === 'number');
  const charts = REPORT_CHARTS.filter((c) => c.series.some((s) => present(s.key)));
  const missing = REPORT_CHARTS.filter((c) => !charts.includes(c));
  const table = (rows: Array<[string, string]>) =>
    `<table>${rows.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`).join('')}</table>`;
  const evalSection = data.eval
    ? `<section><h2>Evaluation (eval.json)</h2>${table(flatten(data.eval))}</section>`
    : '';
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="torch-dpo">
<title>torch-dpo report: ${esc(data.runName)}</title>
<script>window.__tdpoErrors = []; window.addEventListener('error', function (e) { window.__tdpoErrors.push(String(e.message)); document.documentElement.setAttribute('data-js-errors', window.__tdpoErrors.join(' | ')); });</script>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 16px 24px; color: #222; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 18px 0 6px; }
.meta { color: #666; font-size: 12px; margin-bottom: 8px; }
.top { display: flex; gap: 32px; flex-wrap: wrap; align-items: flex-start; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; } th { background: #f4f4f4; font-weight: 600; }
td { font-variant-numeric: tabular-nums; }
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 16px; }
.chart { position: relative; height: 300px; border: 1px solid #e4e4e4; border-radius: 4px; padding: 6px; }
.nodata { color: #888; font-size: 13px; }
</style>
</head>
<body data-charts-expected="${charts.length}">
<h1>torch-dpo training report: ${esc(data.runName)}</h1>
<div class="meta">generated ${esc(data.generated)} · ${data.metrics.length} metrics lines · self-contained (Chart.js inlined)</div>
<div class="top">
<section><h2>Summary</h2>${table(summarize(data.metrics))}</section>
${evalSection}
</div>
<h2>Curves</h2>
<div class="grid">
${charts.map((c) => `<div class="chart"><canvas id="chart-${esc(c.id)}" aria-label="${esc(c.title)}"></canvas></div>`).join('\n')}
</div>
${missing.length ? `<p class="nodata">Not logged in this run: ${missing.map((c) => esc(c.title)).join(', ')}.</p>` : ''}
<script type="application/json" id="tdpo-data">${scriptJson(data)}</script>
<script type="application/json" id="tdpo-charts">${scriptJson(charts)}</script>
<script>${chartJsBundle()}</script>
<script>${PAGE_SCRIPT}</script>
</body>
</html>
`;
}

/** Extracts the embedded run data from a report page (for tests and tools). */
export function extractReportData(html: string): ReportData {
  const m = /<script type="application\/json" id="tdpo-data">([\s\S]*?)<\/script>/.exec(html);
  if (!m) throw new ValidationError('Expected an embedded <script id="tdpo-data"> block in the report but found none');
  return JSON.parse(m[1]) as ReportData;
}

/**
 * Reads runDir/metrics.jsonl (required) and runDir/eval.json (optional) and writes a self-contained HTML report to
 * `outFile` (default runDir/report.html). Returns the path written.
 */
export async function writeReport(runDir: string, outFile: string = path.join(runDir, 'report.html')): Promise<string> {
  if (typeof runDir !== 'string' || runDir.length === 0) throw new ValidationError(`Expected a run directory path for runDir but received ${describe(runDir)}`);
  const metrics = await readMetrics(path.join(runDir, 'metrics.jsonl'));
  const evalData = await readEval(path.join(runDir, 'eval.json'));
  const html = renderReportHtml({ runName: path.basename(path.resolve(runDir)), generated: new Date().toISOString(), metrics, eval: evalData });
  await writeFileAtomic(outFile, html);
  return outFile;
}
