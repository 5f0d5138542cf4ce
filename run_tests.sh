#!/usr/bin/env bash
# The whole test suite: fast unit tests first, then every notebook through nbval.
# Notebook outputs go to a temporary folder, never over the committed figures/ and tables/.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/bootstrap.sh
export RRS_OUTPUT_ROOT=${RRS_OUTPUT_ROOT:-$(mktemp -d)}
export PYTHONHASHSEED=0
echo "[tests] unit tests"
.venv/bin/python -m pytest tests -q "$@"
echo "[tests] notebooks (nbval, outputs under $RRS_OUTPUT_ROOT)"
.venv/bin/python -m pytest --nbval-lax notebooks -q -p no:cacheprovider
