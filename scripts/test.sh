#!/usr/bin/env bash
# Set up (if needed), lint, and run the whole test suite (unit tests, notebooks, one small
# end-to-end simulation). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
