"""Trains (or resumes) a model: python scripts/train.py --config=configs/gpt_tiny.py --workdir=DIR.

Any config field can be overridden: --config.total_steps=100 --config.optimizer.learning_rate=1e-3.
SIGTERM or Ctrl-C saves a checkpoint after the current step and exits 0; rerun to resume.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ptjax import config as config_lib
from ptjax import runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py[:ARG]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, TensorBoard logs, tokenizer.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    with runtime.start_up():
        runtime.initialize(runtime.workload_for("train", FLAGS.config.model.dtype))
        from ptjax.train import trainer  # After initialize(): TF must not see accelerators.

    try:
        result = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except trainer.USER_ERRORS as e:  # A mistake in the flags, config, data or workdir.
        logging.error("%s: %s", type(e).__name__, e)
        sys.exit(2)
    except KeyboardInterrupt:  # A second Ctrl-C: stop without waiting for a checkpoint.
        logging.error("Interrupted; the run resumes from its last complete checkpoint.")
        sys.exit(130)
    if result["preempted"]:  # SIGTERM/SIGINT: a checkpoint was saved; exit 0 for schedulers.
        return
    logging.info("Done at step %d: %s", result["step"], result["eval"])
    print(f"tensorboard --logdir {FLAGS.workdir}")


if __name__ == "__main__":
    try:
        config_lib.check_override_flags(sys.argv)
    except config_lib.ConfigError as e:
        sys.exit(f"ConfigError: {e}")
    app.run(main)
