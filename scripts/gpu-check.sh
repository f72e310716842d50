#!/usr/bin/env bash
# Runs on the GPU machine (see scripts/gpu-pack.sh): builds the addon against the CUDA libtorch of Python's torch,
# runs the whole test suite (CUDA-only tests enabled there) and the CPU/GPU info, writing logs under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
source .gpu/activate.sh
[ -d node_modules ] || xz -dc .gpu/node_modules.tar.xz | tar -xf -
export NLOHMANN_JSON_INCLUDE=$PWD/.gpu/include
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
t0=$(date +%s)
node scripts/build-native.js --tests 2>&1 | tee "$OUT/build.log" | tail -5
echo "build: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/summary.txt"
node -e "console.log(JSON.stringify(require('./dist/lib').runtimeInfo()))" | tee -a "$OUT/summary.txt"
npx ava 2>&1 | tee "$OUT/ava.log" | tail -15
ctest --test-dir build --output-on-failure -j 8 2>&1 | tee "$OUT/ctest.log" | tail -5
grep -hE "tests passed|tests failed|out of" "$OUT/ava.log" "$OUT/ctest.log" | tee -a "$OUT/summary.txt"
# Issue "GPU performance": torch-dpo vs the transformers peers on the issue's shape (bench/gpu_step.ts).
timeout "${BENCH_TIMEOUT:-420}" node dist/bench/gpu_step.js --steps 10 --warmup 3 2>&1 | tee "$OUT/bench.txt" | tail -12
# The loss alone against its matmul floor and the naive / Liger peers (bench/loss_step.ts).
timeout "${LOSS_BENCH_TIMEOUT:-180}" node dist/bench/loss_step.js --peers naive,liger 2>&1 | tee "$OUT/loss-bench.txt" | tail -12
