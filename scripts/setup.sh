#!/usr/bin/env bash
# Create .venv (if missing) and install fedlab with its dev extra. Idempotent: reinstalls only
# when pyproject.toml changed since the last install. Needs only python3 (>= 3.11) with venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.fedlab-install
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
  # torch is pinned to 2.13.0 in pyproject.toml: a looser pin pulls a multi-GB CUDA build.
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  echo "$want" > "$stamp"
fi
