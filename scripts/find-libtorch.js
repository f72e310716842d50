#!/usr/bin/env node
// Finds a libtorch to build against, in the documented order, and says which one it chose.
//   1. LIBTORCH (a libtorch root: include/, lib/, share/cmake/Torch) or Torch_DIR (the folder holding TorchConfig.cmake)
//   2. a Python `torch` (python3 on PATH, then /usr/bin/python3): torch.utils.cmake_prefix_path, CUDA build when it has one
//   3. the system (Debian's libtorch-dev: /usr/lib/<triplet>/cmake/Torch)
// Usage: node scripts/find-libtorch.js [--json | --cmake-dir | --gyp-includes | --gyp-defines | --gyp-std | --gyp-libs | --gyp-ldflags]
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');

const MIN_VERSION = [1, 13];

function readVersion(cmakeDir) {
  const f = path.join(cmakeDir, 'TorchConfigVersion.cmake');
  if (!fs.existsSync(f)) return null;
  const m = /set\(PACKAGE_VERSION "([0-9.]+)/.exec(fs.readFileSync(f, 'utf8'));
  return m ? m[1] : null;
}

function hasConfig(dir) {
  return !!dir && fs.existsSync(path.join(dir, 'TorchConfig.cmake'));
}

// A candidate describes one libtorch: where its CMake config is, its headers and its libraries.
function fromCmakeDir(cmakeDir, source) {
  const version = readVersion(cmakeDir);
  // Layouts: <root>/share/cmake/Torch (pip wheel, libtorch zip) or /usr/lib/<triplet>/cmake/Torch (Debian).
  let root = path.resolve(cmakeDir, '../../..');
  let includeRoot = path.join(root, 'include');
  let libDir = path.join(root, 'lib');
  if (!fs.existsSync(path.join(includeRoot, 'torch'))) {
    // Debian: headers in /usr/include, libraries beside the cmake folder.
    includeRoot = '/usr/include';
    libDir = path.resolve(cmakeDir, '../..');
  }
  const cuda = fs.existsSync(path.join(libDir, 'libtorch_cuda.so'));
  return {
    source,
    cmakeDir,
    version,
    includeDirs: [includeRoot, path.join(includeRoot, 'torch/csrc/api/include')],
    libDir,
    libs: ['torch', 'torch_cpu', 'c10'].concat(cuda ? ['torch_cuda', 'c10_cuda'] : []),
    cuda,
  };
}

function pythonCandidates() {
  const out = [];
  for (const py of ['python3', '/usr/bin/python3']) {
    try {
      const dir = execFileSync(py, ['-c', 'import torch.utils, os; print(os.path.join(torch.utils.cmake_prefix_path, "Torch"))'], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'ignore'],
        timeout: 60000,
      }).trim();
      if (hasConfig(dir)) out.push(fromCmakeDir(dir, `Python torch (${py})`));
    } catch {
      /* no torch in this interpreter */
    }
  }
  return out;
}

function systemCandidates() {
  const out = [];
  for (const dir of ['/usr/lib/x86_64-linux-gnu/cmake/Torch', '/usr/lib/aarch64-linux-gnu/cmake/Torch', '/usr/lib/cmake/Torch', '/usr/local/share/cmake/Torch']) {
    if (hasConfig(dir)) out.push(fromCmakeDir(dir, `system (${dir})`));
  }
  return out;
}

// Compile definitions libtorch's CMake targets give their users (e.g. USE_DISTRIBUTED, USE_C10D_GLOO), read from
// Caffe2Targets.cmake beside Torch's config, so that node-gyp builds see the same headers as CMake builds.
function interfaceDefines(cmakeDir) {
  const f = path.join(cmakeDir, '..', 'Caffe2', 'Caffe2Targets.cmake');
  if (!fs.existsSync(f)) return [];
  const out = new Set();
  for (const m of fs.readFileSync(f, 'utf8').matchAll(/INTERFACE_COMPILE_DEFINITIONS "([^"$]*)"/g)) {
    for (const d of m[1].split(';')) if (/^[A-Za-z_][A-Za-z0-9_]*(=[^;]*)?$/.test(d)) out.add(d);
  }
  return [...out];
}

// nlohmann/json.hpp for node-gyp builds (CMake finds it itself): $NLOHMANN_JSON_INCLUDE or the system's.
function jsonInclude() {
  for (const d of [process.env.NLOHMANN_JSON_INCLUDE, '/usr/include', '/usr/local/include']) {
    if (d && fs.existsSync(path.join(d, 'nlohmann/json.hpp'))) return [d];
  }
  return [];
}

// For a CUDA libtorch (kept in step with CMakeLists.txt): the folders holding nccl.h ($NCCL_INCLUDE, the pip
// nvidia-nccl package beside torch, the CUDA toolkit, the system's) and cuda_runtime_api.h, so that node-gyp builds
// compile the NCCL process group in too; [] when either is missing (distributed.cpp then leaves NCCL out).
function ncclIncludes(c) {
  if (!c.cuda) return [];
  const site = path.resolve(c.cmakeDir, '../../../..');
  const nvidia = path.join(site, 'nvidia');
  const pip = fs.existsSync(nvidia) ? fs.readdirSync(nvidia).map((d) => path.join(nvidia, d, 'include')) : [];
  const cudaHome = process.env.CUDA_HOME || process.env.CUDA_PATH || '/usr/local/cuda';
  const find = (file, dirs) => dirs.find((d) => d && fs.existsSync(path.join(d, file)));
  const cudaInc = find('cuda_runtime_api.h', [path.join(cudaHome, 'include'), ...pip, '/usr/include']);
  const nccl = find('nccl.h', [process.env.NCCL_INCLUDE, ...pip, path.join(cudaHome, 'include'), '/usr/include']);
  return nccl && cudaInc ? [...new Set([nccl, cudaInc])] : [];
}

// The C++ standard libtorch's headers need (kept in step with CMakeLists.txt): 20 from libtorch 2.10 on or when its
// TorchConfig.cmake sets CXX_STANDARD 20 (Debian's 2.14 does), else 17.
function cxxStandard(c) {
  const [a, b] = (c.version || '0.0').split('.').map(Number);
  let config = '';
  try {
    config = fs.readFileSync(path.join(c.cmakeDir, 'TorchConfig.cmake'), 'utf8');
  } catch {}
  return a > 2 || (a === 2 && b >= 10) || /CXX_STANDARD\s+2\d/.test(config) ? 20 : 17;
}

function versionOk(v) {
  if (!v) return false;
  const [a, b] = v.split('.').map(Number);
  return a > MIN_VERSION[0] || (a === MIN_VERSION[0] && b >= MIN_VERSION[1]);
}

function find() {
  const env = process.env;
  if (env.LIBTORCH) {
    const dir = path.join(env.LIBTORCH, 'share/cmake/Torch');
    if (!hasConfig(dir)) throw new Error(`LIBTORCH=${env.LIBTORCH} has no share/cmake/Torch/TorchConfig.cmake; expected a libtorch root folder`);
    return check(fromCmakeDir(dir, 'LIBTORCH'));
  }
  if (env.Torch_DIR) {
    if (!hasConfig(env.Torch_DIR)) throw new Error(`Torch_DIR=${env.Torch_DIR} has no TorchConfig.cmake; expected the folder that holds it`);
    return check(fromCmakeDir(env.Torch_DIR, 'Torch_DIR'));
  }
  const all = [...pythonCandidates(), ...systemCandidates()];
  // A CUDA build wins over a CPU one of the same tier; within a tier the first found wins.
  const chosen = all.find((c) => c.cuda && versionOk(c.version)) || all.find((c) => versionOk(c.version));
  if (!chosen) {
    const old = all.map((c) => `${c.source} ${c.version}`).join(', ');
    throw new Error(
      'torch-dpo: no usable libtorch found' + (old ? ` (found only older than 1.13: ${old})` : '') + '. Provide one of:\n' +
        '  - LIBTORCH=/path/to/libtorch (a folder with include/, lib/, share/cmake/Torch)\n' +
        '  - Torch_DIR=/path/to/folder/with/TorchConfig.cmake\n' +
        '  - a Python torch >= 1.13 importable by python3 (pip install torch)\n' +
        '  - Debian/Ubuntu: apt-get install -y libtorch-dev libgloo-dev',
    );
  }
  return chosen;
}

function check(c) {
  if (!versionOk(c.version)) throw new Error(`torch-dpo: ${c.source} at ${c.cmakeDir} is libtorch ${c.version || 'of unknown version'}; torch-dpo needs >= 1.13`);
  return c;
}

if (require.main === module) {
  try {
    const c = find();
    const arg = process.argv[2] || '--json';
    if (arg === '--json') console.log(JSON.stringify(c, null, 2));
    else if (arg === '--cmake-dir') console.log(c.cmakeDir);
    else if (arg === '--gyp-includes') console.log([...c.includeDirs, ...jsonInclude(), ...ncclIncludes(c)].join(' '));
    else if (arg === '--gyp-defines') console.log(interfaceDefines(c.cmakeDir).join(' '));
    else if (arg === '--gyp-std') console.log(`-std=c++${cxxStandard(c)}`);
    else if (arg === '--gyp-libs') console.log(c.libs.map((l) => `-l${l}`).join(' '));
    else if (arg === '--gyp-ldflags') console.log(`-L${c.libDir} -Wl,-rpath,${c.libDir} -Wl,--no-as-needed`);
    else throw new Error(`unknown option ${arg}`);
  } catch (e) {
    console.error(e.message);
    process.exit(1);
  }
}

module.exports = { find };
