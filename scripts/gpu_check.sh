#!/usr/bin/env bash
# The accelerator check, prepared to run as one command on a GPU VM (scripts/tpu_check.sh runs
# it on a TPU VM): GPT-2 small and medium (sequence 1024), BERT-base masked LM (512) and T5-base
# (512 -> 512: the benchmark's seq2seq rows are one length), bf16 compute with float32
# parameters, each with the attention kernel `auto` picks (cuDNN on GPU, splash on TPU) and
# with plain XLA attention; attention dropout 0 in both, so that the kernel serves the training
# step and the two differ in the kernel only. For each: tokens/s, step time, peak device memory
# and MFU against the device's own bf16 matmul rate measured in the same run (8192^3), from
# scripts/benchmark.py (--baseline=none).
#
#   bash scripts/gpu_check.sh [OUTDIR]     # OUTDIR (default gpu_results): <model>-<size>-<attn>.txt,
#                                          # each's last line the benchmark's JSON
#
# Needs only JAX with the accelerator's plugin, flax, optax, orbax-checkpoint, ml_collections
# and absl-py: the benchmark's ptjax side imports no TensorFlow (see BUILD_NOTES.md, "On an
# accelerator image"). Settings: RUNS (default below: "model:size:seq_len ..."), ATTENTION
# ("auto xla"), BATCH (per device, 8), STEPS (10 per block), ROUNDS (3), PYTHON (python3).
set -euo pipefail
out=${1:-gpu_results}
mkdir -p "$out"
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PTJAX_NO_ENV_TUNING=1  # Never re-execute with the CPU tuning (runtime skips it on accelerators too).
python=${PYTHON:-python3}
"$python" -c "import jax; print('devices:', jax.devices())"
for run in ${RUNS:-gpt:small:1024 gpt:medium:1024 bert:base:512 t5:base:512}; do
  IFS=: read -r model size seq <<<"$run"
  for attention in ${ATTENTION:-auto xla}; do
    echo "== $model/$size, bf16, ${BATCH:-8} x $seq tokens per device, attention=$attention"
    "$python" "$root/scripts/benchmark.py" --model="$model" --size="$size" --seq_len="$seq" \
      --per_device_batch_size="${BATCH:-8}" --dtype=bfloat16 --baseline=none --env_tuning=off \
      --attention="$attention" --attention_dropout=0 \
      --steps="${STEPS:-10}" --rounds="${ROUNDS:-3}" --warmup_steps=2 \
      | tee "$out/$model-$size-$attention.txt" || echo "!! $model/$size attention=$attention failed"
  done
done
