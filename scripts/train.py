"""Trains (or resumes) a model: python scripts/train.py --config=configs/gpt_tiny.py --workdir=DIR.

Any config field can be overridden: --config.total_steps=100 --config.optimizer.learning_rate=1e-3.
"""

from absl import app, flags, logging
from ml_collections import config_flags

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
    runtime.initialize()
    from ptjax.train import trainer  # After runtime.initialize(): TF must not see accelerators.

    result = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    logging.info("Done at step %d: %s", result["step"], result["eval"])
    print(f"tensorboard --logdir {FLAGS.workdir}")


if __name__ == "__main__":
    app.run(main)
