#!/usr/bin/env bash
# The README's main command: setup (idempotent), then the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
node dist/lib/cli.js demo "$@"
