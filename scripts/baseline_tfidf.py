"""A TF-IDF + logistic-regression baseline for a classification config, scored with ptjax's
own metrics on the same splits the BERT fine-tuning uses.

    python scripts/baseline_tfidf.py --config=configs/bert_classify.py --split=test

Fits scikit-learn's TfidfVectorizer (word 1-2 grams, sublinear tf) and LogisticRegression on
the config's train split, picks C on its eval split, and prints the metrics of the chosen
model on --split (one JSON line last). Sentence pairs are joined with a separator token.
"""

from __future__ import annotations

import json
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from ptjax import runtime

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line; defined only when run as a script, so that tests can import it."""
    config_flags.DEFINE_config_file("config", None, "A classification config file.")
    flags.DEFINE_string("split", "test", "Split to report (C is chosen on its eval split).")


def _joined(texts: list[str], pairs: list[str] | None) -> list[str]:
    return texts if pairs is None else [f"{a} [SEP] {b}" for a, b in zip(texts, pairs, strict=True)]


def run(config, split: str) -> dict:
    """Fits the baseline and returns {'C', 'seconds', metrics on `split`...}."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from ptjax.data import encoder_pipeline
    from ptjax.evaluation import classification
    from ptjax.train import trainer

    start = time.perf_counter()
    data_dir = trainer.default_data_dir(config)
    names = encoder_pipeline.label_names(config, data_dir)
    data = {
        s: encoder_pipeline.read_labeled_examples(config, s, data_dir=data_dir)
        for s in dict.fromkeys([config.dataset.train_split, config.dataset.eval_split, split])
    }
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    x_train = vectorizer.fit_transform(_joined(*data[config.dataset.train_split][:2]))
    y_train = data[config.dataset.train_split][2]

    def fit(c: float):
        return LogisticRegression(C=c, max_iter=2000).fit(x_train, y_train)

    def scores(model, s: str) -> dict:
        texts, pairs, labels = data[s]
        predicted = model.predict(vectorizer.transform(_joined(texts, pairs)))
        cm = classification.confusion_matrix(labels, predicted, len(names))
        return classification.scores(cm, names)

    models = {c: fit(c) for c in (1.0, 10.0, 100.0)}  # Each fitted once.
    best_c = max(models, key=lambda c: scores(models[c], config.dataset.eval_split)["macro_f1"])
    result = {"C": best_c, **scores(models[best_c], split)}
    result["seconds"] = time.perf_counter() - start
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
    print(f"TF-IDF + logistic regression (C={result['C']:g}) on {FLAGS.split}:")
    for key, value in result.items():
        if key != "C":
            print(f"  {key:<24} {value:.4f}")
    print(json.dumps({"split": FLAGS.split, **result}))


if __name__ == "__main__":
    define_flags()
    app.run(main)
