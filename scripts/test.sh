#!/usr/bin/env bash
# Set up (first time only) and run the test suite. Arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` for the quick subset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# tests/deploy/test_compose.py validates deploy/compose.yaml with Debian's docker-compose (no
# engine needed); without it that test skips, so a failed install does not stop the run.
ensure_docker_compose() {
  command -v docker-compose >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || return 0
  local sudo=""
  if [ "$(id -u)" != 0 ]; then command -v sudo >/dev/null 2>&1 || return 0; sudo="sudo -n"; fi
  local install="$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose"
  printf '[test] installing docker-compose for tests/deploy\n' >&2
  $install >/dev/null 2>&1 || { $sudo apt-get update -qq >/dev/null 2>&1 && $install >/dev/null 2>&1; } ||
    printf '[test] could not install docker-compose; tests/deploy/test_compose.py will skip\n' >&2
}
ensure_docker_compose
# Lint and format first (ruff, pinned in pyproject's dev extra): a finding fails the run in seconds.
.venv/bin/ruff check --quiet . || { printf '[test] ruff check failed: `.venv/bin/ruff check --fix .` mends most\n' >&2; exit 1; }
.venv/bin/ruff format --check --quiet . || { printf '[test] not formatted: run `.venv/bin/ruff format .`\n' >&2; exit 1; }
exec .venv/bin/python -m pytest "$@"
