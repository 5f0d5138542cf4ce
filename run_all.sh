#!/usr/bin/env bash
# Regenerate every table and figure: ./run_all.sh [--profile mini|colab|paper] [--only 03] [--force]
set -euo pipefail
cd "$(dirname "$0")"
./scripts/bootstrap.sh
exec .venv/bin/python -m rrs.pipeline "$@"
