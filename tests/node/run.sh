#!/usr/bin/env bash
# ctest entry of the Node client tests: installs the pinned official `openai` package from the npm
# registry (npm ci, from package-lock.json) when node_modules lacks it, then runs node's test
# runner on test_openai.mjs against `dseek serve` (the binary given as $1).
set -euo pipefail
dir=$(cd "$(dirname "$0")" && pwd)
export DSEEK_BINARY="$1"
# The server runs the model on its scheduler thread beside httplib's: spinning OpenMP teams would
# starve them on a small CI machine.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
cd "$dir"
if [[ ! -f node_modules/openai/package.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
exec node --test test_openai.mjs
