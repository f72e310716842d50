#!/usr/bin/env bash
# Renders a report made from a small generated run in headless Chromium and checks that it really drew its charts:
#   - the DOM after scripts ran has data-charts-rendered == data-charts-expected, no data-js-errors, and the title
#     the page sets after Chart.js finished;
#   - the screenshot is a 1200x1600 PNG larger than 20 KB with thousands of coloured pixels (the curves; text, tables
#     and grid lines are grey, so a page with tables but no drawn charts fails).
# Usage: scripts/check-report.sh [OUT_DIR]   (OUT_DIR keeps report.html, report.png, dom.html; default: a temp dir)
# Env: CHROMIUM=/path/to/chromium to choose the browser.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-}"
KEEP=1; if [ -z "$OUT" ]; then KEEP=0; fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tdpo-check-report.XXXXXX")"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
if [ -z "$OUT" ]; then OUT="$WORK/out"; fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

fail() { echo "check-report: FAIL: $*" >&2; exit 1; }

# --- browser --------------------------------------------------------------------------------------------------
BROWSER="${CHROMIUM:-}"
if [ -z "$BROWSER" ]; then
  for b in chromium chromium-browser google-chrome; do
    if command -v "$b" >/dev/null 2>&1; then BROWSER="$(command -v "$b")"; break; fi
  done
fi
if [ -z "$BROWSER" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "check-report: installing chromium with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >/dev/null || fail "apt-get install chromium failed"
    BROWSER="$(command -v chromium)" || fail "chromium not on PATH after installing it"
  else
    fail "no chromium found; install it (apt-get install chromium) or set CHROMIUM=/path/to/chromium"
  fi
fi

# --- build report.js on its own (other modules of the tree need not compile) ---------------------------------
(cd "$REPO" && npx tsc --outDir "$WORK/js" --rootDir "$REPO" --module commonjs --target ES2022 --strict \
  --esModuleInterop --skipLibCheck --types node lib/report.ts lib/fs_atomic.ts lib/validate.ts) || fail "tsc failed"

# --- a small generated run: 120 steps, eval every 20, and an eval.json --------------------------------------
RUN="$OUT/run"
mkdir -p "$RUN"
node - "$RUN" <<'EOF'
const fs = require('fs'), path = require('path');
const run = process.argv[2];
let seed = 7;
const noise = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648 - 0.5);
const lines = [];
for (let s = 1; s <= 120; s++) {
  const margin = 1.8 * (1 - Math.exp(-s / 40)) + 0.15 * noise();
  lines.push({
    step: s, epoch: s / 60,
    loss: Math.log1p(Math.exp(-margin)) + 0.03 * noise(),
    'rewards/chosen': 0.4 * margin + 0.05 * noise(), 'rewards/rejected': -0.6 * margin + 0.05 * noise(),
    'rewards/accuracies': Math.min(1, 0.5 + 0.45 * (1 - Math.exp(-s / 30)) + 0.05 * noise()), 'rewards/margins': margin,
    'logps/chosen': -80 + 2 * margin + noise(), 'logps/rejected': -82 - 6 * margin + noise(),
    learning_rate: 5e-7 * Math.min(1, s / 12) * (1 - (s - 1) / 120), grad_norm: 4 * Math.exp(-s / 50) + 0.5 + 0.2 * noise(),
    tokens_per_second: 2100 + 80 * noise(),
  });
  if (s % 20 === 0) {
    const em = 1.5 * (1 - Math.exp(-s / 45));
    lines.push({ step: s, epoch: s / 60, eval_loss: Math.log1p(Math.exp(-em)), 'eval_rewards/margins': em, 'eval_rewards/accuracies': 0.5 + 0.4 * (1 - Math.exp(-s / 35)) });
  }
}
fs.writeFileSync(path.join(run, 'metrics.jsonl'), lines.map((l) => JSON.stringify(l)).join('\n') + '\n');
fs.writeFileSync(path.join(run, 'eval.json'), JSON.stringify({ eval_loss: 0.3012, 'eval_rewards/accuracies': 0.8125, eval_samples: 64 }, null, 2));
EOF
NODE_PATH="$REPO/node_modules" node -e "
  require('$WORK/js/lib/report.js').writeReport(process.argv[1], process.argv[2])
    .then((f) => console.log('check-report: wrote ' + f))
    .catch((e) => { console.error(e.message); process.exit(1); });" "$RUN" "$OUT/report.html" || fail "writeReport failed"

# --- render -----------------------------------------------------------------------------------------------------
FLAGS=(--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update --disable-sync
       --no-first-run --hide-scrollbars --window-size=1200,1600 --virtual-time-budget=5000)
URL="file://$OUT/report.html"
timeout 120 "$BROWSER" "${FLAGS[@]}" --user-data-dir="$WORK/profile-dom" --dump-dom "$URL" >"$OUT/dom.html" 2>"$OUT/chromium-dom.log" \
  || fail "chromium --dump-dom failed (see $OUT/chromium-dom.log)"
timeout 120 "$BROWSER" "${FLAGS[@]}" --user-data-dir="$WORK/profile-png" --screenshot="$OUT/report.png" "$URL" >"$OUT/chromium-png.log" 2>&1 \
  || fail "chromium --screenshot failed (see $OUT/chromium-png.log)"

# --- checks -----------------------------------------------------------------------------------------------------
node - "$OUT/dom.html" "$OUT/report.png" <<'EOF'
const fs = require('fs');
const [domFile, png] = process.argv.slice(2);
const dom = fs.readFileSync(domFile, 'utf8');
const bad = (m) => { console.error('check-report: FAIL: ' + m); process.exit(1); };
const body = /<body([^>]*)>/.exec(dom);
const root = /<html([^>]*)>/.exec(dom);
if (!body || !root) bad(`no <html>/<body> in ${domFile}`);
const attr = (n, tag = body) => { const m = new RegExp(`${n}="([^"]*)"`).exec(tag[1]); return m ? m[1] : undefined; };
const errs = attr('data-js-errors', root);
if (errs !== undefined) bad(`JavaScript errors in the page: ${errs}`);
const expected = Number(attr('data-charts-expected')), rendered = Number(attr('data-charts-rendered'));
if (!(expected >= 5)) bad(`expected at least 5 charts in the page, data-charts-expected=${attr('data-charts-expected')}`);
if (rendered !== expected) bad(`rendered ${attr('data-charts-rendered')} of ${expected} charts (DOM in ${domFile})`);
if (!new RegExp(`<title>[^<]*\\(rendered ${expected} charts\\)</title>`).test(dom)) bad('the page did not set its "rendered" title');
const canvases = dom.match(/<canvas [^>]*id="chart-[^"]+"[^>]*>/g) || [];
if (canvases.length !== expected) bad(`found ${canvases.length} chart canvases, expected ${expected}`);
const sized = canvases.filter((c) => /width="\d{3,}"/.test(c) && /height="\d{3,}"/.test(c));
if (sized.length !== expected) bad(`only ${sized.length} of ${expected} canvases were sized by Chart.js: ${canvases.join(' ')}`);
const buf = fs.readFileSync(png);
if (buf.length < 8 || buf.toString('latin1', 1, 4) !== 'PNG') bad(`${png} is not a PNG`);
const w = buf.readUInt32BE(16), h = buf.readUInt32BE(20);
if (w !== 1200 || h !== 1600) bad(`${png} is ${w}x${h}, expected 1200x1600`);
if (buf.length <= 20 * 1024) bad(`${png} is only ${buf.length} bytes: the page looks blank`);
// Decode the PNG (8-bit RGB/RGBA, not interlaced) and count saturated pixels: the plotted lines are coloured, while
// text, tables and grid lines are grey, so a page whose charts did not draw has almost none.
const depth = buf[24], ctype = buf[25], interlace = buf[28];
if (depth !== 8 || (ctype !== 2 && ctype !== 6) || interlace !== 0) bad(`${png}: unsupported PNG format (depth ${depth}, colour type ${ctype}, interlace ${interlace})`);
const idat = [];
for (let o = 8; o < buf.length; ) {
  const len = buf.readUInt32BE(o), type = buf.toString('latin1', o + 4, o + 8);
  if (type === 'IDAT') idat.push(buf.subarray(o + 8, o + 8 + len));
  o += 12 + len;
}
const raw = require('zlib').inflateSync(Buffer.concat(idat));
const bpp = ctype === 6 ? 4 : 3, stride = w * bpp;
const img = Buffer.alloc(h * stride);
for (let y = 0; y < h; y++) {
  const f = raw[y * (stride + 1)], src = y * (stride + 1) + 1, dst = y * stride;
  for (let x = 0; x < stride; x++) {
    const a = x >= bpp ? img[dst + x - bpp] : 0, b = y > 0 ? img[dst - stride + x] : 0, c = x >= bpp && y > 0 ? img[dst - stride + x - bpp] : 0;
    let p = raw[src + x];
    if (f === 1) p += a;
    else if (f === 2) p += b;
    else if (f === 3) p += (a + b) >> 1;
    else if (f === 4) { const q = a + b - c, pa = Math.abs(q - a), pb = Math.abs(q - b), pc = Math.abs(q - c); p += pa <= pb && pa <= pc ? a : pb <= pc ? b : c; }
    img[dst + x] = p & 255;
  }
}
let coloured = 0;
for (let i = 0; i < img.length; i += bpp) {
  const r = img[i], g = img[i + 1], b = img[i + 2];
  if (Math.max(r, g, b) - Math.min(r, g, b) > 80) coloured++;
}
if (coloured < 5000) bad(`${png}: only ${coloured} coloured pixels; the curves were not drawn`);
console.log(`check-report: OK: ${rendered}/${expected} charts rendered, no JS errors, screenshot ${w}x${h} ${buf.length} bytes, ${coloured} coloured (curve) pixels`);
EOF
if [ "$KEEP" = 1 ]; then echo "check-report: report.html, report.png and dom.html are in $OUT"; fi
