#!/usr/bin/env bash
# The scaling issue's accelerator check, prepared to run as one command on a GPU (or TPU) VM:
# GPT-2 small and medium, bf16 compute with float32 parameters, sequence 1024; for each, the
# train step's tokens/s, step time, peak device memory and MFU against the device's own bf16
# matmul rate measured in the same run (8192^3), from scripts/benchmark.py (--baseline=none).
#
#   bash scripts/gpu_check.sh [OUTDIR]     # OUTDIR (default gpu_results): <size>.txt per size,
#                                          # its last line the benchmark's JSON
#
# Needs only JAX with the accelerator's plugin, flax, optax, orbax-checkpoint, ml_collections
# and absl-py: the benchmark's ptjax side imports no TensorFlow (see BUILD_NOTES.md, "On an
# accelerator image"). Settings: SIZES ("small medium"), BATCH (per device, 8), SEQ (1024),
# STEPS (10 per block), ROUNDS (3), PYTHON (python3).
set -euo pipefail
out=${1:-gpu_results}
mkdir -p "$out"
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PTJAX_NO_ENV_TUNING=1  # Never re-execute with the CPU tuning (runtime skips it on accelerators too).
python=${PYTHON:-python3}
"$python" -c "import jax; print('devices:', jax.devices())"
for size in ${SIZES:-small medium}; do
  echo "== gpt/$size, bf16, ${BATCH:-8} x ${SEQ:-1024} tokens per device"
  "$python" "$root/scripts/benchmark.py" --model=gpt --size="$size" --seq_len="${SEQ:-1024}" \
    --per_device_batch_size="${BATCH:-8}" --dtype=bfloat16 --baseline=none --env_tuning=off \
    --steps="${STEPS:-10}" --rounds="${ROUNDS:-3}" --warmup_steps=2 | tee "$out/$size.txt"
done
