#!/usr/bin/env bash
# Pretrains a tiny GPT on the bundled corpus (a few minutes on 2 CPU cores).
#   bash scripts/demo.sh [WORKDIR]      (default: runs/gpt_tiny_demo)
# Run it again with the same WORKDIR and it resumes (or reports that the run is complete).
set -euo pipefail
cd "$(dirname "$0")/.."
workdir="${1:-runs/gpt_tiny_demo}"
source scripts/venv.sh
# The bundled corpus is prepared once into the workdir's sibling data directory.
export TFDS_DATA_DIR="${TFDS_DATA_DIR:-$(dirname "$workdir")/tfds}"
python scripts/train.py --config=configs/gpt_tiny.py --workdir="$workdir" --alsologtostderr
