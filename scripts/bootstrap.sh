#!/usr/bin/env bash
# Create .venv (once) and install the project with its test tools, at the versions of
# requirements.lock. Idempotent: re-running only reinstalls when pyproject.toml or the lock changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.rrs-installed
want=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing rrs and its dependencies into .venv (about a minute the first time)"
  # uv installs the same pinned wheels as pip, in parallel: 36 s instead of 3.4 min on a
  # 2-core machine (torch's CUDA wheels are most of the 5 GB). pip is the fallback.
  if .venv/bin/python -m pip install -q "uv>=0.9,<1" &&
     UV_LINK_MODE=copy .venv/bin/uv pip install --quiet --python .venv/bin/python \
       -c requirements.lock -e ".[dev]"; then
    :
  else
    echo "[bootstrap] uv did not work here; installing with pip instead"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -c requirements.lock -e ".[dev]"
  fi
  .venv/bin/python -m ipykernel install --prefix .venv --name python3 >/dev/null
  echo "$want" > "$stamp"
fi
