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

pkgs=libtorch-dev,libgloo-dev,nlohmann-json3-dev,libgtest-dev,cmake,ninja-build,ccache,make,g++,python3-torch
pkgs=$pkgs,python3-transformers,python3-tokenizers,python3-safetensors,git,ca-certificates,procps,gdb
if [ ! -x "$chroot_dir/usr/bin/python3" ]; then
  command -v mmdebstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null; }
  echo "check-sid: creating the sid chroot in $chroot_dir (mmdebstrap, ~1 GiB download)"
  # Check-Valid-Until off: a mirror snapshot's Release file may be past its validity date.
  mmdebstrap --variant=apt --aptopt='Acquire::Check-Valid-Until "false"' --include="$pkgs" \
    sid "$chroot_dir" http://deb.debian.org/debian > "$OUT/mmdebstrap.log" 2>&1 ||
    { tail -20 "$OUT/mmdebstrap.log" >&2; exit 1; }
fi

# Node.js from this machine (the chroot's glibc is newer, so the binary runs there).
node_bin=$(readlink -f "$(command -v node)")
npm_dir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
mkdir -p "$chroot_dir/opt/node/bin" "$chroot_dir/opt/node/lib/node_modules"
cp "$node_bin" "$chroot_dir/opt/node/bin/node"
rm -rf "$chroot_dir/opt/node/lib/node_modules/npm"; cp -r "$npm_dir" "$chroot_dir/opt/node/lib/node_modules/npm"
ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$chroot_dir/opt/node/bin/npm"
ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$chroot_dir/opt/node/bin/npx"
cp /etc/resolv.conf "$chroot_dir/etc/resolv.conf"
# This machine's CA bundle too (npm registry access through a TLS-inspecting proxy needs its certificate).
cp "${NODE_EXTRA_CA_CERTS:-/etc/ssl/certs/ca-certificates.crt}" "$chroot_dir/etc/ssl/host-ca.crt" 2>/dev/null || true

# This checkout's files (tracked and untracked, not ignored) into a fresh directory of the chroot.
work="$chroot_dir/work/torch-dpo"
rm -rf "$work"; mkdir -p "$work"
(cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} sh -c '[ -e "{}" ] && printf "%s\0" "{}"' |
  tar --null -T - -cf -) | tar -xf - -C "$work"

mounts=(proc sys dev dev/pts dev/shm)
cleanup() { for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "$chroot_dir/${mounts[$i]}" 2>/dev/null || true; done; }
trap cleanup EXIT
mount -t proc proc "$chroot_dir/proc"; mount --rbind /sys "$chroot_dir/sys"; mount --rbind /dev "$chroot_dir/dev"
mount -t devpts devpts "$chroot_dir/dev/pts" 2>/dev/null || true; mount -t tmpfs tmpfs "$chroot_dir/dev/shm" 2>/dev/null || true

inside() { chroot "$chroot_dir" /usr/bin/env -i HOME=/root PATH=/opt/node/bin:/usr/local/bin:/usr/bin:/bin \
  TORCH_DPO_TRANSFORMERS=1 CI="${CI:-}" NODE_EXTRA_CA_CERTS=/etc/ssl/host-ca.crt npm_config_cafile=/etc/ssl/host-ca.crt bash -c "cd /work/torch-dpo && $1"; }

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
