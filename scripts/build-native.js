#!/usr/bin/env node
// Builds the native addon with cmake-js against the libtorch that scripts/find-libtorch.js picks (and prints).
//   node scripts/build-native.js [--tests]   (--tests also builds the GoogleTest suite for ctest)
'use strict';
const path = require('node:path');
const os = require('node:os');
const { spawnSync } = require('node:child_process');
const { find } = require('./find-libtorch.js');

const root = path.resolve(__dirname, '..');
let torch;
try {
  torch = find();
} catch (e) {
  console.error(e.message);
  process.exit(1);
}
console.log(`torch-dpo: building against libtorch ${torch.version} (${torch.cuda ? 'CUDA' : 'CPU'}) from ${torch.source}: ${torch.cmakeDir}`);
const tests = process.argv.includes('--tests') || process.env.TORCH_DPO_TESTS === '1';
const jobs = process.env.TORCH_DPO_JOBS || String(Math.max(1, os.availableParallelism ? os.availableParallelism() : os.cpus().length));
const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
const defs = [`--CDTorch_DIR=${torch.cmakeDir}`, `--CDTORCH_DPO_TESTS=${tests ? 'ON' : 'OFF'}`];
if (torch.cuda && process.env.CUDA_HOME) defs.push(`--CDCUDAToolkit_ROOT=${process.env.CUDA_HOME}`);
const t0 = Date.now();
// configure every time (a few seconds) so that changed options apply; then an incremental build.
for (const step of [['configure', ...defs], ['build', '--parallel', jobs, ...defs]]) {
  const r = spawnSync(process.execPath, [cmakeJs, ...step, '--log-level', 'warn'], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) {
    console.error(`torch-dpo: native ${step[0]} failed (see the output above)`);
    process.exit(r.status || 1);
  }
}
console.log(`torch-dpo: native build done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
