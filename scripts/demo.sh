#!/usr/bin/env bash
# Pretrains a tiny GPT on the bundled corpus (a few minutes on 2 CPU cores).
#   bash scripts/demo.sh [WORKDIR]      (default: runs/gpt_tiny_demo)
# Run it again with the same WORKDIR and it resumes (or reports that the run is complete).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
workdir="$(realpath -m "${1:-$repo/runs/gpt_tiny_demo}")"  # Relative to where it was called.
cd "$repo"
source scripts/venv.sh ""  # No extras (an explicit argument: a bare `source` would pass ours).
# The bundled corpus is prepared once into the workdir's sibling data directory.
export TFDS_DATA_DIR="${TFDS_DATA_DIR:-$(dirname "$workdir")/tfds}"
python scripts/train.py --config=configs/gpt_tiny.py --workdir="$workdir" --alsologtostderr
