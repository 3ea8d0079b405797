#!/usr/bin/env bash
# Set up (if needed) and run an experiment; arguments are Hydra overrides for fedlab-run.
#   bash scripts/run.sh                      # the default experiment (digits, FedAvg)
#   bash scripts/run.sh strategy=fedprox     # any override
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fedlab-run "$@"
