"""The copy-the-source baseline of a seq2seq config: every input, without its task prefix,
taken as the output, and scored with the run's own text metrics on the same split.

    python scripts/baseline_copy.py --config=configs/t5_en_es.py --split=test

What a model must beat to have learnt anything: for en->es the shared names, numbers and
punctuation already score some BLEU; for summarization it is the whole article (ROUGE recall
without precision). Prints the metrics, one JSON line last.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from ptjax import runtime

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line; defined only when run as a script, so that tests can import it."""
    config_flags.DEFINE_config_file("config", None, "A seq2seq config file.")
    flags.DEFINE_string("split", "test", "Split to score.")


def run(config, split: str) -> dict:
    """{'examples', metrics...} of copying the inputs (prefix removed) on `split`."""
    from ptjax import config as config_lib
    from ptjax import run as run_lib
    from ptjax.data import seq2seq_pipeline
    from ptjax.evaluation import text_metrics
    from ptjax.tasks import TASKS
    from ptjax.tasks.seq2seq import Seq2Seq, decoded_metrics
    from ptjax.train import trainer

    run_lib.validate(config)
    if not issubclass(TASKS[config.task], Seq2Seq):
        raise config_lib.ConfigError(f"Config task={config.task!r}; the baseline needs seq2seq.")
    data_dir = trainer.default_data_dir(config)
    config.dataset.max_eval_batches = 0  # The whole split.
    inputs, _ = seq2seq_pipeline.seq2seq_eval_texts(config, split=split, data_dir=data_dir)
    references = seq2seq_pipeline.seq2seq_eval_references(config, split=split, data_dir=data_dir)
    prefix = run_lib.input_prefix(config)  # What load_pairs put before every input.
    predictions = [text.removeprefix(prefix) for text in inputs]
    result: dict = {"split": split, "examples": len(predictions), "prefix_removed": prefix}
    for name in decoded_metrics(config):
        result.update(text_metrics.score(name, predictions, references))
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    runtime.initialize()
    from ptjax.train import trainer

    try:
        result = run(FLAGS.config, FLAGS.split)
    except (*trainer.USER_ERRORS, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    for key, value in result.items():
        print(f"  {key:<16} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    define_flags()
    app.run(main)
