#!/usr/bin/env bash
# Builds the addon with node-gyp from binding.gyp (the alternative to cmake-js) in a scratch copy of the tree, so
# that cmake-js's build/ is left alone, and puts the result in build-gyp/Release/torch_dpo.node.
# Then `TORCH_DPO_ADDON=build-gyp/Release/torch_dpo.node npx ava` runs the TS suite against it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$root"
# the sources node-gyp needs (from git's view when this is a clone; a plain copy of the tree otherwise)
if git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard | grep -z -E '^(binding\.gyp|package\.json|native/|scripts/)'
else
  find binding.gyp package.json native scripts -type f -print0
fi | xargs -0 -I{} cp --parents {} "$tmp"
ln -s "$root/node_modules" "$tmp/node_modules"
t0=$(date +%s)
nodedir=${npm_config_nodedir:-$(npm config get nodedir 2>/dev/null || true)}
(cd "$tmp" && "$root/node_modules/.bin/node-gyp" rebuild -j max --loglevel=warn ${nodedir:+--nodedir="$nodedir"})
mkdir -p "$root/build-gyp/Release"
cp "$tmp/build/Release/torch_dpo.node" "$root/build-gyp/Release/torch_dpo.node"
echo "torch-dpo: node-gyp build done in $(( $(date +%s) - t0 )) s -> build-gyp/Release/torch_dpo.node"
