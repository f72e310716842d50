#!/usr/bin/env bash
# The CUDA build check on a machine without a GPU: builds (once) a Debian 13 (trixie) chroot with Debian's CUDA
# libtorch (libtorch-cuda-dev 2.6, contrib), the CUDA 12.4 toolkit and NCCL (non-free) but no gloo headers (as in
# the Python torch wheels of the GPU machine), copies this checkout in and runs `npm ci` (the cmake-js build of the
# addon against it), the native test suite's compile and link, and the node-gyp build. It proves that the CUDA build
# compiles and links, with the NCCL process group in; it runs nothing: Debian cannot ship cuDNN (its nvidia-cudnn
# package downloads it from NVIDIA at install time, unreachable here) and libtorch_cuda needs libcudnn.so.9 to load.
# Needs root, apt and ~12 GiB of disk (the first run downloads ~3 GiB). Logs go to $OUT (default /tmp/check-cuda-build).
#
#   bash scripts/check-cuda-build.sh [--chroot DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
chroot_dir=/srv/torch-dpo-cuda
while [ $# -gt 0 ]; do
  case "$1" in
    --chroot) chroot_dir=$2; shift 2 ;;
    *) echo "check-cuda-build: unknown argument $1 (expected --chroot DIR)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-/tmp/check-cuda-build}; mkdir -p "$OUT"
[ "$(id -u)" = 0 ] || { echo "check-cuda-build: needs root (chroot, mounts)" >&2; exit 2; }
source "$root/scripts/chroot-lib.sh"

chroot_create trixie "main contrib non-free" \
  nlohmann-json3-dev,libgtest-dev,cmake,ninja-build,ccache,make,g++,git,ca-certificates,procps,binutils,nvidia-cuda-toolkit,libnccl-dev
chroot_populate
chroot_mount
if ! inside 'test -f /usr/lib/x86_64-linux-gnu/cmake/Torch/TorchConfig.cmake'; then
  # nvidia-cudnn's post-install script downloads cuDNN from NVIDIA; divert it to a no-op so that libtorch-cuda-dev
  # installs (its headers and CMake config are all the build needs).
  inside 'printf "#!/bin/sh\nexit 0\n" > /usr/local/sbin/no-op && chmod +x /usr/local/sbin/no-op &&
    dpkg-divert --local --rename --divert /usr/sbin/update-nvidia-cudnn.real --add /usr/sbin/update-nvidia-cudnn &&
    ln -sf /usr/local/sbin/no-op /usr/sbin/update-nvidia-cudnn &&
    apt-get -o Acquire::Check-Valid-Until=false update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libtorch-cuda-dev' > "$OUT/apt.log" 2>&1 ||
    { tail -20 "$OUT/apt.log" >&2; exit 1; }
fi
inside 'dpkg-query -W libtorch-cuda-dev nvidia-cuda-toolkit libnccl-dev; g++ --version | head -1; node --version' | tee "$OUT/versions.txt"

t0=$(date +%s)
inside 'npm ci --no-audit --no-fund' > "$OUT/npm-ci.log" 2>&1 || { tail -40 "$OUT/npm-ci.log" >&2; exit 1; }
echo "check-cuda-build: npm ci (cmake-js build against CUDA libtorch) $(( $(date +%s) - t0 )) s" | tee "$OUT/summary.txt"
grep -m1 "building against libtorch" "$OUT/npm-ci.log" | tee -a "$OUT/summary.txt"
grep -q "libtorch .* (CUDA)" "$OUT/npm-ci.log" || { echo "check-cuda-build: the build did not take the CUDA libtorch" >&2; exit 1; }
# The addon must carry the NCCL process group (its constructor is referenced from libtorch_cuda).
inside 'nm -DC build/Release/torch_dpo.node | grep -c "c10d::ProcessGroupNCCL::ProcessGroupNCCL"' > "$OUT/nccl-symbols.txt" ||
  { echo "check-cuda-build: torch_dpo.node does not reference ProcessGroupNCCL (NCCL not compiled in)" >&2; exit 1; }
echo "check-cuda-build: NCCL process group compiled in" | tee -a "$OUT/summary.txt"

t0=$(date +%s)
# The native tests compile and link; cuDNN's absence is allowed at link time (libtorch_cuda needs it, nothing here does).
inside 'cmake -S . -B build-tests -G Ninja -DTORCH_DPO_TESTS=ON -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined \
  -DCMAKE_GTEST_DISCOVER_TESTS_DISCOVERY_MODE=PRE_TEST > /dev/null && cmake --build build-tests' > "$OUT/native-tests.log" 2>&1 ||
  { tail -40 "$OUT/native-tests.log" >&2; exit 1; }
echo "check-cuda-build: native test suite compiled and linked in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/summary.txt"

t0=$(date +%s)
inside 'bash scripts/build-gyp.sh' > "$OUT/gyp.log" 2>&1 || { tail -40 "$OUT/gyp.log" >&2; exit 1; }
echo "check-cuda-build: node-gyp build $(( $(date +%s) - t0 )) s" | tee -a "$OUT/summary.txt"
warnings=$(cat "$OUT/npm-ci.log" "$OUT/native-tests.log" "$OUT/gyp.log" | grep -c "warning:" || true)
echo "check-cuda-build: passed ($warnings compiler warnings in the logs: grep 'warning:' $OUT/*.log)" | tee -a "$OUT/summary.txt"
