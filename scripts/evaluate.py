"""Evaluates a checkpoint of a ptjax run on a split and prints (and saves) its metrics.

    python scripts/evaluate.py --workdir=/tmp/bert_spam --split=test --checkpoint=best

--checkpoint: 'latest' (default), 'best' (WORKDIR/best, kept when config.best_metric is set),
a step number, or a checkpoint step directory. The metrics go to stdout (one per line, then
one JSON line) and to WORKDIR/results/<split>_step_<N>.json.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from ptjax import config as config_lib
from ptjax import runtime

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The run directory.", required=True)
flags.DEFINE_string("split", None, "Split to evaluate (default: the run's eval split).")
flags.DEFINE_string("checkpoint", "latest", "'latest', 'best', a step, or a step directory.")
flags.DEFINE_bool("write", True, "Save the metrics under WORKDIR/results/.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:  # A directory that holds no run is named before JAX and TensorFlow start.
        dtype = config_lib.load_run_config(FLAGS.workdir).model.dtype
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    with runtime.start_up():
        runtime.initialize(runtime.workload_for("train", dtype))  # bf16 runs keep YNNPACK.
        from ptjax.train import evaluator, trainer

    try:
        result = evaluator.evaluate_checkpoint(
            FLAGS.workdir, split=FLAGS.split, checkpoint=FLAGS.checkpoint, write=FLAGS.write
        )
    except (*trainer.USER_ERRORS, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"{result.split} split, step {result.step} ({result.checkpoint}):")
    for key, value in result.metrics.items():
        print(f"  {key:<24} {value:.4f}")
    if "confusion_matrix" in result.details:
        print("  confusion matrix (rows: true, columns: predicted):", result.details["label_names"])
        for row in result.details["confusion_matrix"]:
            print("   ", row)
    if result.results_file:
        print(f"saved {result.results_file}")
    print(json.dumps({"split": result.split, "step": result.step, **result.metrics}))


if __name__ == "__main__":
    app.run(main)
