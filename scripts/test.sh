#!/usr/bin/env bash
# Installs ptjax with its test extras into a virtualenv and runs ruff and the whole test suite.
#   bash scripts/test.sh [pytest args...]
# Tests run in PTJAX_TEST_WORKERS pytest-xdist workers (default 2, one per core of the test VM;
# 0 runs them in this process), a module per worker at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh "[test]"
echo "== ruff"
ruff check .
ruff format --check .
echo "== pytest"
python -m pytest -q -n "${PTJAX_TEST_WORKERS:-2}" --dist loadfile "$@"
