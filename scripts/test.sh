#!/usr/bin/env bash
# Installs ptjax with its test extras into a virtualenv and runs ruff and the whole test suite.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh "[test]"
echo "== ruff"
ruff check .
ruff format --check .
echo "== pytest"
python -m pytest -q "$@"
