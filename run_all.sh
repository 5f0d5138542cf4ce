#!/usr/bin/env bash
# Regenerate every table and figure: ./run_all.sh [--profile mini|colab|paper] [--only 03] [--force]
set -euo pipefail
cd "$(dirname "$0")"
./scripts/bootstrap.sh
# each notebook runs in its own kernel; a fixed hash seed keeps any set/dict ordering the same per run
export PYTHONHASHSEED=0
exec .venv/bin/python -m rrs.pipeline "$@"
