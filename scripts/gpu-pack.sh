#!/usr/bin/env bash
# Prepares what a GPU machine without Node.js or network needs (all under the git-ignored .gpu/ and dist/):
# Node.js (../shared/gpu/pack-runtime.sh), node_modules without the TypeScript compiler (xz), nlohmann/json headers,
# and the compiled JavaScript. Then, with the device tool:  run(command="bash scripts/gpu-check.sh",
# carry=[".gpu", "dist"]).  Nothing here has run on a GPU yet (no machine was lent when it was written).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ../shared/gpu/pack-runtime.sh
npx tsc -p tsconfig.json
tar -cf - --exclude=node_modules/typescript --exclude=node_modules/node-gyp --exclude=node_modules/@types node_modules | xz -T0 -6 > .gpu/node_modules.tar.xz
mkdir -p .gpu/include && cp -r /usr/include/nlohmann .gpu/include/
du -sh .gpu dist
