#!/usr/bin/env bash
# The libtorch 2.x and transformers check on a CPU machine: builds (once) a Debian sid chroot with libtorch 2.14
# (libtorch-dev), Python torch 2.14 and Hugging Face transformers 5 / tokenizers from Debian's archive, copies this
# checkout into it, and runs the whole test suite there (npm ci = a fresh build against libtorch 2.x, then
# `npm test`) with the transformers cross-checks switched on (TORCH_DPO_TRANSFORMERS=1). Node.js is this machine's,
# copied in. Needs root, apt and about 3 GiB of disk; the first run downloads ~1 GiB. Logs go to $OUT (default
# /tmp/check-sid).
#
#   bash scripts/check-sid.sh [--chroot DIR] [--regenerate-goldens]
#
# --regenerate-goldens rewrites test/fixtures/transformers/*.json in this checkout from transformers (see
# test/reference/transformers_golden.py) before the tests run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
chroot_dir=/srv/torch-dpo-sid
regen=0
while [ $# -gt 0 ]; do
  case "$1" in
    --chroot) chroot_dir=$2; shift 2 ;;
    --regenerate-goldens) regen=1; shift ;;
    *) echo "check-sid: unknown argument $1 (expected --chroot DIR or --regenerate-goldens)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-/tmp/check-sid}; mkdir -p "$OUT"
[ "$(id -u)" = 0 ] || { echo "check-sid: needs root (chroot, mounts)" >&2; exit 2; }

source "$root/scripts/chroot-lib.sh"
pkgs=libtorch-dev,libgloo-dev,nlohmann-json3-dev,libgtest-dev,cmake,ninja-build,ccache,make,g++,python3-torch
pkgs=$pkgs,python3-transformers,python3-tokenizers,python3-safetensors,git,ca-certificates,procps,gdb
chroot_create sid main "$pkgs"
chroot_populate
chroot_mount
INSIDE_ENV=TORCH_DPO_TRANSFORMERS=1

inside 'python3 -c "import torch, transformers, tokenizers; print(\"sid: torch\", torch.__version__, \"transformers\", transformers.__version__, \"tokenizers\", tokenizers.__version__)"; g++ --version | head -1; node --version' | tee "$OUT/versions.txt"
if [ $regen = 1 ]; then
  inside 'python3 test/reference/transformers_golden.py' 2>&1 | tee "$OUT/goldens.log"
  mkdir -p "$root/test/fixtures/transformers"; cp -r "$work"/test/fixtures/transformers/. "$root/test/fixtures/transformers/"
fi
t0=$(date +%s)
inside 'npm ci --no-audit --no-fund' > "$OUT/npm-ci.log" 2>&1 || { tail -40 "$OUT/npm-ci.log" >&2; exit 1; }
echo "check-sid: npm ci (build against libtorch 2.x) $(( $(date +%s) - t0 )) s" | tee -a "$OUT/summary.txt"
t0=$(date +%s)
status=0
inside 'ulimit -c unlimited; npm test' > "$OUT/npm-test.log" 2>&1 || status=$?
# Backtraces of processes that crashed during the tests (the kernel writes "core" files into their working folder).
find "$work" "$chroot_dir/tmp" -maxdepth 3 -path '*/node_modules' -prune -o -type f \( -name core -o -name 'core.[0-9]*' \) \
  -newer "$OUT/versions.txt" -print 2>/dev/null | while read -r c; do
  echo "== ${c#$chroot_dir}" >> "$OUT/cores.txt"
  inside "gdb -batch -ex 'thread apply all bt 12' /opt/node/bin/node ${c#$chroot_dir}" >> "$OUT/cores.txt" 2>&1 || true
  echo "check-sid: a process crashed; backtrace in $OUT/cores.txt" | tee -a "$OUT/summary.txt"
done
echo "check-sid: npm test $(( $(date +%s) - t0 )) s, exit $status" | tee -a "$OUT/summary.txt"
grep -E "tests? (passed|failed)|known failure|skipped|tests passed|out of|SKIPPED" "$OUT/npm-test.log" | sort | uniq -c | tail -20 | tee -a "$OUT/summary.txt"
exit $status
