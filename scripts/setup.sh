#!/usr/bin/env bash
# One-time setup on a fresh Debian/Ubuntu machine (idempotent): system packages when missing and apt is usable,
# then `npm ci` (which builds the native addon and compiles the TypeScript). Used by the README's two commands.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# Debian packages: libtorch (CPU), gloo headers (distributed), nlohmann-json (native JSON), GoogleTest (native
# tests), python3-torch (independent float64 reference implementations used by the tests), ninja and ccache (builds).
pkgs=(libtorch-dev libgloo-dev nlohmann-json3-dev libgtest-dev cmake ninja-build ccache python3-torch)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    if node scripts/find-libtorch.js --cmake-dir >/dev/null 2>&1; then
      # A libtorch is already there (LIBTORCH, Torch_DIR or Python torch): do not add Debian's.
      missing=("${missing[@]/libtorch-dev}"); missing=("${missing[@]/python3-torch}")
    fi
    echo "setup: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${missing[*]} >/dev/null
  else
    echo "setup: missing system packages (${missing[*]}); install them or set LIBTORCH (see README, Building)" >&2
  fi
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ] || [ ! -f build/Release/torch_dpo.node ]; then
  echo "setup: npm ci (builds the native addon and the TypeScript)"
  npm ci --no-audit --no-fund
else
  npm run --silent build:native
  npm run --silent build:ts
fi
