"""BERT end to end on 8 fake devices: masked-LM pretraining -> classification fine-tuning from
that checkpoint (encoder restored, head fresh) -> evaluation of the best checkpoint on the test
split, through the trainer, scripts/evaluate.py's library and the Python API."""

import contextlib
import json
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_train_e2e import read_scalars, snapshot

from ptjax import QuestionAnswerer, TextClassifier
from ptjax.config import ConfigError, load_run_config
from ptjax.config_presets import bert_classification_config, bert_config, bert_qa_config
from ptjax.data import encoder_pipeline
from ptjax.data.builders import labeled
from ptjax.data.builders import text as text_builders
from ptjax.train import checkpoint, evaluator, trainer

SPAM_TEST_EXAMPLES = 528


@contextlib.contextmanager
def captured_logs():
    """The messages logged (at INFO and above) while the block runs."""
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger().addHandler(handler)
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.INFO)
    try:
        yield records
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(level)  # The bundled spam/ham set's fixed test split.


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _small(config, data_dir):
    config.dataset.data_dir = data_dir
    config.model.size = "tiny"
    config.model.num_layers = 1  # One block: the runs test tasks and the trainer, not depth.
    config.seq_len = 32
    config.per_device_batch_size = 1  # x 8 fake devices.
    config.optimizer.warmup_steps = 1
    config.log_every_steps = 2
    config.dataset.shuffle_buffer = 64
    return config


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_dir):
    config = _small(bert_config("tiny"), data_dir)
    config.tokenizer.vocab_size = 400
    config.tokenizer.max_sentences = 1500
    config.total_steps = 4
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 4
    config.dataset.max_eval_batches = 2
    workdir = str(tmp_path_factory.mktemp("bert_mlm"))
    result = trainer.train_and_evaluate(config, workdir)
    return workdir, result


def test_masked_lm_pretraining_logs_mlm_metrics(pretrained):
    workdir, result = pretrained
    assert result["step"] == 4
    assert np.isfinite(result["eval"]["loss"]) and 0.0 <= result["eval"]["accuracy"] <= 1.0
    scalars = read_scalars(workdir)
    assert {"train/loss", "eval/loss", "eval/accuracy", "eval/perplexity"} <= set(scalars)
    assert os.path.exists(os.path.join(workdir, "results", "validation_step_4.json"))


def _fine_tune_config(pretrained_dir, data_dir, **changes):
    config = _small(bert_classification_config("tiny"), data_dir)
    config.init_checkpoint = pretrained_dir
    config.seq_len = 48
    config.total_steps = 6
    config.eval_every_steps = 3
    config.checkpoint_every_steps = 3
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def test_fine_tune_restores_the_encoder_keeps_a_fresh_head_and_evaluates(
    pretrained, data_dir, tmp_path, monkeypatch
):
    source, _ = pretrained
    before = snapshot(source)
    config = _fine_tune_config(source, data_dir)
    workdir = str(tmp_path / "spam")

    # What init_checkpoint does: shared parameters from the checkpoint, the new head fresh.
    from ptjax import models, tasks

    task, head_kwargs = tasks.create(config, data_dir=data_dir)
    assert head_kwargs == {"num_labels": 2} and task.label_names == ["ham", "spam"]
    model, _ = models.build(config, 400, **head_kwargs)
    fresh = jax.device_get(trainer.init_params(config, model, jax.random.PRNGKey(1)))
    restored = checkpoint.restore_matching_params(source, fresh)
    assert restored.fresh == ["classification/classifier/bias", "classification/classifier/kernel"]
    assert all(name.startswith("mlm/") for name in restored.ignored)
    saved = checkpoint.restore_matching_params(source, restored.params).params  # Idempotent.
    np.testing.assert_array_equal(
        saved["bert"]["embeddings"]["word_embeddings"]["embedding"],
        restored.params["bert"]["embeddings"]["word_embeddings"]["embedding"],
    )
    np.testing.assert_array_equal(
        restored.params["classification"]["classifier"]["kernel"],
        fresh["classification"]["classifier"]["kernel"],
    )

    # Another named size: the shape comes from the source run's config.json, as listed.
    config.model.size, config.model.num_layers = "small", 0  # 0: the size's.
    with captured_logs() as logs:
        result = trainer.train_and_evaluate(config, workdir)
    assert result["step"] == 6
    assert snapshot(source) == before  # The pretraining run is only read.
    saved = load_run_config(workdir).model
    assert (saved.size, saved.num_layers, saved.d_model, saved.num_heads, saved.d_ff) == (
        "small",
        1,
        128,
        2,
        512,
    )
    assert saved.vocab_size == 400 and saved.max_len == 0  # small's 512 positions, as tiny's.
    taken = "model.num_layers=1, model.d_model=128, model.num_heads=2, model.d_ff=512"
    assert any(taken in line and source in line for line in logs), logs
    # The source run's tokenizer came along.
    assert os.path.exists(os.path.join(workdir, "tokenizer", "spm.model"))
    scalars = read_scalars(workdir)
    assert {"eval/accuracy", "eval/macro_f1", "eval/f1/spam", "eval/precision/ham"} <= set(scalars)
    with open(os.path.join(workdir, "results", "validation_step_6.json")) as f:
        record = json.load(f)
    assert record["label_names"] == ["ham", "spam"]
    cm = np.array(record["confusion_matrix"])
    assert cm.sum() == record["metrics"]["examples"] == 519  # Every validation e-mail once.
    with open(os.path.join(workdir, "best", "best.json")) as f:
        best = json.load(f)
    assert best["metric"] == "macro_f1" and best["step"] in (3, 6)

    # The best checkpoint on the held-out test split: every test e-mail exactly once.
    out = evaluator.evaluate_checkpoint(workdir, split="test", checkpoint="best")
    assert out.step == best["step"] and out.metrics["examples"] == SPAM_TEST_EXAMPLES
    assert np.array(out.details["confusion_matrix"]).sum() == SPAM_TEST_EXAMPLES
    assert os.path.exists(out.results_file)
    # scripts/evaluate.py prints the same metrics (last line JSON) and saves a second file.
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "evaluate.py")
    env = dict(os.environ, PTJAX_NO_ENV_TUNING="1", TFDS_DATA_DIR=data_dir)
    done = subprocess.run(
        [sys.executable, script, f"--workdir={workdir}", "--split=test", "--checkpoint=best"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert printed["step"] == out.step and printed["examples"] == SPAM_TEST_EXAMPLES
    assert printed["f1/spam"] == pytest.approx(out.metrics["f1/spam"], abs=1e-6)
    saved = sorted(os.listdir(os.path.join(workdir, "results")))
    assert f"test_step_{out.step}.json" in saved and f"test_step_{out.step}.2.json" in saved
    missing = subprocess.run(
        [sys.executable, script, f"--workdir={tmp_path}", "--checkpoint=best"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert missing.returncode == 1 and "not a ptjax run directory" in missing.stderr

    # The Python API agrees with the evaluation on real test e-mails, with the training data
    # out of reach: the label names come from the run's run.json.
    with open(os.path.join(workdir, "run.json")) as f:
        facts = json.load(f)
    assert facts["label_names"] == ["ham", "spam"] and facts["task"] == "classification"
    assert facts["tokenizer"] == "tokenizer/spm.model" or facts["tokenizer"].startswith("/")

    def no_data(*args, **kwargs):
        raise AssertionError("TextClassifier read the training data")

    monkeypatch.setattr(encoder_pipeline, "label_names", no_data)
    classify = TextClassifier.from_workdir(workdir, checkpoint="best")
    monkeypatch.undo()
    records = [
        r for r in labeled.spam_records() if labeled.spam_split(labeled.spam_text(r)) == "test"
    ][:40]
    texts = [labeled.spam_text(r) for r in records]
    predictions = classify(texts)
    assert len(predictions) == 40
    assert all(p["label"] in ("ham", "spam") for p in predictions)
    assert all(abs(sum(p["scores"].values()) - 1.0) < 1e-5 for p in predictions)
    probs = classify.predict_proba(texts[:3])
    np.testing.assert_allclose(probs[:, 1], [p["scores"]["spam"] for p in predictions[:3]])


def test_fine_tune_errors_name_the_problem(pretrained, data_dir, tmp_path):
    source, _ = pretrained
    with pytest.raises(ConfigError, match="best_metric='f1/eggs'"):
        trainer.train_and_evaluate(
            _fine_tune_config(source, data_dir, best_metric="f1/eggs"), str(tmp_path / "a")
        )
    assert not os.path.exists(tmp_path / "a" / "checkpoints")
    config = _fine_tune_config(source, data_dir)
    config.model.num_labels = 3
    with pytest.raises(ConfigError, match="model.num_labels=3"):
        trainer.train_and_evaluate(config, str(tmp_path / "b"))
    config = _fine_tune_config(source, data_dir)
    config.model.d_model = 256  # Contradicts the source run's width.
    with pytest.raises(ConfigError, match=r"model.d_model=256 contradicts .* d_model=128"):
        trainer.train_and_evaluate(config, str(tmp_path / "c"))
    config = _fine_tune_config(source, data_dir)
    config.model.pre_ln = True  # Another architecture with the same shapes.
    with pytest.raises(ConfigError, match=r"pre_ln=True \(source: False\)"):
        trainer.train_and_evaluate(config, str(tmp_path / "d"))
    config = _fine_tune_config(source, data_dir)
    config.init_checkpoint = os.path.join(source, "checkpoints", "4")  # A step directory.
    config.model.vocab_size = 500  # Another vocabulary than the source's tokenizer.
    with pytest.raises(ConfigError, match="model.vocab_size=500 contradicts"):
        trainer.train_and_evaluate(config, str(tmp_path / "e"))
    assert not any(os.path.exists(tmp_path / d) for d in "cde")


def test_extractive_qa_fine_tune_and_evaluate(pretrained, data_dir, tmp_path):
    source, _ = pretrained
    config = _small(bert_qa_config("tiny"), data_dir)
    config.init_checkpoint = source
    config.seq_len = 64
    config.qa.max_query_len = 16
    config.qa.doc_stride = 24
    config.per_device_batch_size = 4
    config.total_steps = 4
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 4
    workdir = str(tmp_path / "qa")
    result = trainer.train_and_evaluate(config, workdir)
    metrics = result["eval"]
    assert metrics["examples"] == 234  # Every demo validation question, once.
    assert metrics["windows"] > metrics["examples"]  # Long passages give several windows.
    assert 0.0 <= metrics["exact_match"] <= metrics["f1"] <= 100.0
    with open(os.path.join(workdir, "results", "validation_step_4.json")) as f:
        record = json.load(f)
    assert len(record["predictions_sample"]) == 20
    scalars = read_scalars(workdir)
    assert {"eval/exact_match", "eval/f1", "eval/loss", "train/loss"} <= set(scalars)

    answer = QuestionAnswerer.from_workdir(workdir)
    context = "In the beginning God created the heavens and the earth."
    out = answer(question="What word comes after created?", context=context)
    assert out["answer"] == context[out["start"] : out["end"]]
    assert np.isfinite(out["score"])


def test_extractive_qa_without_a_tokenizer_is_refused(data_dir, tmp_path):
    config = _small(bert_qa_config("tiny"), data_dir)
    with pytest.raises(ConfigError, match="init_checkpoint"):
        trainer.train_and_evaluate(config, str(tmp_path / "qa"))


def test_qa_head_learns_the_generated_set(pretrained, data_dir, tmp_path):
    """A tiny BERT from scratch fits 64 generated questions about real verses: exact match on
    them rises from (nearly) nothing to most of them, through the trainer and the n-best
    post-processing."""
    from ptjax.data import qa

    source, _ = pretrained
    verses = [v for v in text_builders.bible_verses()[2000:2400] if 60 < len(v) < 120]
    examples = qa.make_learnable_qa(verses, 64, seed=0)
    path = tmp_path / "qa.jsonl"
    with open(path, "w") as f:
        for e in examples:
            answers = [{"text": e.answers[0], "answer_start": e.answer_starts[0]}]
            record = {"id": e.id, "question": e.question, "context": e.context, "answers": answers}
            f.write(json.dumps(record) + "\n")

    def config(steps):
        c = _small(bert_qa_config("tiny"), data_dir)
        c.model.num_layers = 2  # Finding the word after the asked one takes two.
        c.dataset.name = "qa_files"
        c.dataset.train_files = c.dataset.eval_files = str(path)
        c.tokenizer.path = os.path.join(source, "tokenizer", "spm.model")
        c.seq_len, c.qa.max_query_len, c.qa.doc_stride = 64, 16, 32
        c.per_device_batch_size = 2
        c.total_steps = c.eval_every_steps = c.checkpoint_every_steps = steps
        c.optimizer.learning_rate = 3e-3
        c.optimizer.warmup_steps = min(10, steps)
        c.model.dropout_rate = 0.0
        c.best_metric = ""
        return c

    before = trainer.train_and_evaluate(config(1), str(tmp_path / "before"))["eval"]
    after = trainer.train_and_evaluate(config(120), str(tmp_path / "after"))["eval"]
    assert before["examples"] == after["examples"] == 64
    assert before["exact_match"] < 20.0
    # (Official SQuAD v1.1 F1 is 0 for an answer that normalises to nothing, such as "a", even
    # when exact match counts it.)
    assert after["exact_match"] > 60.0 and after["f1"] > 60.0
