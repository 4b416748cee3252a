"""ptjax.run: the run file's facts written and read back, its errors, checkpoint resolution."""

import os

import pytest

from ptjax import run
from ptjax.config import base_config


def test_run_file_round_trip_and_relative_tokenizer(tmp_path):
    config = base_config()
    config.task, config.model.family = "classification", "bert"
    tokenizer = os.path.join(tmp_path, "tokenizer", "spm.model")
    facts = run.run_facts(config, tokenizer, ["ham", "spam"], str(tmp_path))
    assert facts == {
        "family": "bert",
        "task": "classification",
        "label_names": ["ham", "spam"],
        "input_prefix": "",
        "tokenizer": os.path.join("tokenizer", "spm.model"),
    }
    run.write_run_file(str(tmp_path), facts)
    before = os.stat(tmp_path / run.RUN_FILE).st_mtime_ns
    run.write_run_file(str(tmp_path), facts)  # Again, as a resumed run does: left untouched.
    assert os.stat(tmp_path / run.RUN_FILE).st_mtime_ns == before
    assert run.read_run_file(str(tmp_path)) == facts
    changed = {**facts, "label_names": ["a", "b"]}
    run.write_run_file(str(tmp_path), changed)  # Facts that changed replace the file.
    assert run.read_run_file(str(tmp_path)) == changed
    assert not os.path.exists(tmp_path / (run.RUN_FILE + ".tmp"))
    elsewhere = run.run_facts(config, "/models/spm.model", None, str(tmp_path))
    assert elsewhere["tokenizer"] == "/models/spm.model" and elsewhere["label_names"] is None


def test_a_run_without_a_run_file_reads_as_empty_and_a_corrupt_one_is_named(tmp_path):
    assert run.read_run_file(str(tmp_path)) == {}
    (tmp_path / run.RUN_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="run.json is not valid JSON"):
        run.read_run_file(str(tmp_path))
    (tmp_path / run.RUN_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds list"):
        run.read_run_file(str(tmp_path))


def test_resolve_checkpoint_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no checkpoints"):
        run.resolve_checkpoint(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="best checkpoint"):
        run.resolve_checkpoint(str(tmp_path), "best")
    (tmp_path / "checkpoints" / "5").mkdir(parents=True)
    (tmp_path / "checkpoints" / "12").mkdir()
    assert run.resolve_checkpoint(str(tmp_path)) == (str(tmp_path / "checkpoints" / "12"), 12)
    assert run.resolve_checkpoint(str(tmp_path), "5")[1] == 5
    with pytest.raises(FileNotFoundError, match="no checkpoint step 7"):
        run.resolve_checkpoint(str(tmp_path), "7")


def test_input_prefix_of_a_translation_run():
    config = base_config()
    config.task, config.model.family, config.dataset.name = "seq2seq", "t5", "ptjax_en_es"
    assert run.input_prefix(config) == "translate English to Spanish: "
    config.task = "causal_lm"
    assert run.input_prefix(config) == ""
