#!/usr/bin/env bash
# Create .venv (if missing) and install fedlab with its dev extra. Idempotent: reinstalls only
# when pyproject.toml changed since the last install. Needs only python3 (>= 3.11) with venv.
# Says what each stage installs and how long it took. On a terminal pip shows its own progress;
# elsewhere (CI logs) pip stays quiet so a log gets a few lines, not hundreds; set
# FEDLAB_SETUP_VERBOSE=1 for pip's full output anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ -t 1 ] || [ "${FEDLAB_SETUP_VERBOSE:-0}" = 1 ]; then
  pip_output=(--progress-bar on)
else
  pip_output=(--quiet --progress-bar off)
fi

stage() {  # stage NAME DETAIL COMMAND...: a line saying what it installs, one with its time
  local name=$1 detail=$2 started=$SECONDS
  shift 2
  echo "fedlab setup: $name${detail:+ ($detail)} ..."
  "$@"
  echo "fedlab setup: $name: done in $((SECONDS - started)) s"
}

if [ ! -x .venv/bin/python ]; then
  stage "creating .venv" "$("$PYTHON" --version 2>&1)" "$PYTHON" -m venv .venv
fi
stamp=.venv/.fedlab-install
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  stage "upgrading pip, setuptools and wheel" "" \
    .venv/bin/python -m pip install "${pip_output[@]}" --upgrade pip setuptools wheel
  # torch is pinned to 2.13.0 in pyproject.toml: a looser pin pulls a multi-GB CUDA build.
  stage "installing fedlab -e .[dev]" "torch 2.13.0 CPU, flwr + Ray, Opacus, CodeCarbon, Hydra,\
 Qiskit + Aer: about 1.8 GB, 1-4 minutes, longer without a pip cache" \
    .venv/bin/python -m pip install "${pip_output[@]}" -e ".[dev]"
  echo "$want" > "$stamp"
fi
