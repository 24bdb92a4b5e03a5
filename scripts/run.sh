#!/usr/bin/env bash
# Set up (first time only) and run the default training job: `dvla run` plus any
# arguments given here, e.g. `bash scripts/run.sh --preset smoke algo.lr=1e-3`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/dvla run "$@"
