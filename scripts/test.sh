#!/usr/bin/env bash
# Set up (first time only) and run the test suite. Arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` for the quick subset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
