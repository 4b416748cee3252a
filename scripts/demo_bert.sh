#!/usr/bin/env bash
# The BERT recipe on the bundled spam/ham e-mails (about 15 minutes on 2 CPU cores):
#   1. masked-LM pretraining of a tiny BERT on the e-mails' train split (texts only, no labels),
#   2. fine-tuning for spam/ham from that checkpoint, keeping the best validation macro F1,
#   3. the best checkpoint on the held-out test split, and a TF-IDF + logistic-regression
#      baseline on the same split.
#   bash scripts/demo_bert.sh [DIR]      (default: runs/bert_demo; runs go in DIR/pretrain, DIR/spam)
# Run it again with the same DIR and each step resumes or reports that it is complete.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="$(realpath -m "${1:-$repo/runs/bert_demo}")"
cd "$repo"
source scripts/venv.sh "[baseline]"  # scikit-learn for the baseline.
export TFDS_DATA_DIR="${TFDS_DATA_DIR:-$dir/tfds}"
python scripts/train.py --config=configs/bert_tiny.py --config.dataset.name=ptjax_spam \
    --workdir="$dir/pretrain" --alsologtostderr
python scripts/train.py --config=configs/bert_classify.py:size=tiny \
    --config.init_checkpoint="$dir/pretrain" --workdir="$dir/spam" --alsologtostderr
python scripts/evaluate.py --workdir="$dir/spam" --split=test --checkpoint=best
python scripts/baseline_tfidf.py --config=configs/bert_classify.py --split=test
