#!/usr/bin/env bash
# scripts/gpu_check.sh on a TPU VM: the same runs (auto attention is Pallas splash/flash there),
# the same figures, into OUTDIR (default tpu_results). Install first (BUILD_NOTES.md, "On a TPU
# VM"): pip install -U "jax[tpu]" and ptjax's runtime dependencies.
#
#   bash scripts/tpu_check.sh [OUTDIR]
set -euo pipefail
exec bash "$(dirname "$0")/gpu_check.sh" "${1:-tpu_results}"
