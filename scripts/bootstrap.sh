#!/usr/bin/env bash
# Create .venv (once) and install the project with its test tools, at the versions of
# requirements.lock. Idempotent: re-running only reinstalls when pyproject.toml or the lock changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  # pyproject.toml asks for Python 3.11 or 3.12: say so here, not in a pip resolver error
  if ! "$PY" -c 'import sys, venv; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null; then
    echo "[bootstrap] $PY is not Python 3.11 or 3.12 with the venv module ($("$PY" --version 2>&1 | head -1));" \
         "run with PYTHON=python3.11 (or python3.12) ./run_all.sh" >&2
    exit 1
  fi
  echo "[bootstrap] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.rrs-installed
want=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing rrs and its dependencies into .venv (a few minutes the first time)"
  # pip, not uv: where a CPU build of torch lies on the machine's disk (pip's find-links),
  # pip takes it; uv would download the 3 GB CUDA build from PyPI instead.
  .venv/bin/python -m pip install -q -c requirements.lock -e ".[dev]"
  # ipykernel stages the kernel spec in a temporary folder that it does not remove: give it one
  spec_tmp=$(mktemp -d)
  TMPDIR=$spec_tmp .venv/bin/python -m ipykernel install --prefix .venv --name python3 >/dev/null
  rm -rf "$spec_tmp"
  echo "$want" > "$stamp"
fi
