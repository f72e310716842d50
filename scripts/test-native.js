#!/usr/bin/env node
// Builds (incrementally) and runs the native GoogleTest suite through ctest.
'use strict';
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const root = path.resolve(__dirname, '..');
function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status || 1);
}
run(process.execPath, [path.join(__dirname, 'build-native.js'), '--tests']);
run('ctest', ['--test-dir', 'build', '--output-on-failure', '-j', process.env.TORCH_DPO_CTEST_JOBS || '2']);
