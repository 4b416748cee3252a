# Sourced by demo.sh and test.sh: creates (once) and activates the virtualenv, installs ptjax.
#   PTJAX_VENV: the virtualenv (default .venv);  PYTHON: the interpreter to create it with.
#   $1: the extras to install, e.g. "[test]" (default none).
venv="${PTJAX_VENV:-.venv}"
if [[ ! -x "$venv/bin/python" ]]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
python -m pip install -q --upgrade pip
# compat mode: TFDS finds builder resources through importlib, which the default editable
# finder breaks (see BUILD_NOTES.md).
python -m pip install -q -e ".${1:-}" --config-settings editable_mode=compat
