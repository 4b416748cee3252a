#!/usr/bin/env bash
# Installs ptjax with its test extras into a virtualenv and runs ruff and the whole test suite.
#   bash scripts/test.sh [pytest args...]
# PTJAX_VENV picks the virtualenv (default: .venv in the repo).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${PTJAX_VENV:-.venv}"
python="${PYTHON:-python3}"
if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[test]" --config-settings editable_mode=compat
echo "== ruff"
ruff check .
ruff format --check .
echo "== pytest"
python -m pytest -q "$@"
