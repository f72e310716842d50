#!/usr/bin/env bash
# The README's test command: setup (idempotent), then every test: the ava suite and the native ctest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
npm test
