"""Tasks with their own eval under parallelism.mode=mesh: `Parallel.predict_step` hands each
batch row back in place in either mode; T5 seq2seq (decoding, text metrics) and BERT extractive
QA (span post-processing on the host) give pmap's metrics and decoded texts on a (data=2,
fsdp=2, tensor=2) mesh of 8 fake devices, through the trainer's eval path; and
scripts/evaluate.py's library evaluates a mesh-mode workdir as its run did."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptjax import config as config_lib
from ptjax import models, tasks
from ptjax.config_presets import bert_qa_config, t5_config
from ptjax.data import qa
from ptjax.data.builders import text as text_builders
from ptjax.data.tokenizer import Tokenizer, train_tokenizer
from ptjax.models import bert
from ptjax.train import evals, evaluator, parallel, sharding, steps, trainer


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One tokenizer (BERT's control symbols; T5 adds its sentinels), text pairs (a verse ->
    its first words) and generated QA examples, all from bundled verses."""
    root = tmp_path_factory.mktemp("mesh_tasks")
    verses = [v for v in text_builders.bible_verses()[2000:3000] if 60 < len(v) < 120]
    spm = str(root / "spm.model")
    train_tokenizer(verses, spm, vocab_size=400, control_symbols=bert.CONTROL_SYMBOLS)
    pairs = root / "pairs.jsonl"
    with open(pairs, "w") as f:
        for verse in verses[:20]:
            f.write(json.dumps({"inputs": verse, "targets": " ".join(verse.split()[:3])}) + "\n")
    questions = root / "qa.jsonl"
    with open(questions, "w") as f:
        for e in qa.make_learnable_qa(verses, 24, seed=0):
            answers = [{"text": e.answers[0], "answer_start": e.answer_starts[0]}]
            record = {"id": e.id, "question": e.question, "context": e.context, "answers": answers}
            f.write(json.dumps(record) + "\n")
    return dict(spm=spm, pairs=str(pairs), qa=str(questions), data_dir=str(root / "tfds"))


@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_predict_step_gives_each_batch_row_back_in_place_and_sums_over_all(mode):
    """Parallel.predict_step: per-row outputs in the batch's [devices, per_device, ...] layout,
    sums over every row; on a mesh whose tensor axis holds each row block twice too."""
    par = (
        parallel.Parallel() if mode == "pmap" else parallel.Parallel(sharding.make_mesh((2, 2, 2)))
    )
    devices = jax.local_device_count()
    batch = {"x": np.arange(devices * 2 * 3, dtype=np.float32).reshape(devices, 2, 3)}
    params = {"w": np.full((4,), 0.5, np.float32)}

    def fn(params, batch):
        return {"total": jnp.sum(batch["x"])}, (batch["x"] * 2 + params["w"][0], batch["x"][:, 0])

    sums, (doubled, first) = par.predict_step(fn)(par.place(params), batch)
    assert isinstance(doubled, np.ndarray) and doubled.shape == (devices, 2, 3)
    np.testing.assert_array_equal(doubled, batch["x"] * 2 + 0.5)
    np.testing.assert_array_equal(first, batch["x"][..., 0])
    assert float(np.asarray(sums["total"])[0]) == batch["x"].sum()


def _on_mesh(config, mode):
    config.parallelism.mode = mode
    config.parallelism.fsdp = config.parallelism.tensor = 2  # data=-1: the other 2.
    return config


def _seq2seq_config(files, mode):
    c = t5_config("tiny", "seq2seq")
    c.dataset.name = "seq2seq_files"
    c.dataset.train_files = c.dataset.eval_files = files["pairs"]
    c.dataset.data_dir = files["data_dir"]
    c.tokenizer.path = files["spm"]
    c.seq_len, c.seq2seq.target_len = 32, 8
    c.model.num_layers = c.model.num_decoder_layers = 1
    c.per_device_batch_size = 2  # 16 rows a batch: the 20 pairs make 2, the second padded.
    c.seq2seq.metrics = "bleu,rouge,squad"
    return _on_mesh(c, mode)


def _qa_config(files, mode):
    c = bert_qa_config("tiny")
    c.dataset.name = "qa_files"
    c.dataset.train_files = c.dataset.eval_files = files["qa"]
    c.dataset.data_dir = files["data_dir"]
    c.tokenizer.path = files["spm"]
    c.seq_len, c.qa.max_query_len, c.qa.doc_stride = 48, 16, 16  # Several windows a context.
    c.model.num_layers = 1
    c.per_device_batch_size = 2
    c.best_metric = ""
    c.total_steps = c.eval_every_steps = c.checkpoint_every_steps = 1
    c.optimizer.warmup_steps = 1
    return _on_mesh(c, mode)


def _eval(config, noise=0.0):
    """evals.run_eval under config's parallel mode of fresh parameters (seed 0), plus seeded
    Gaussian `noise` (a fresh T5 decodes the pad id everywhere; noisy weights give every row
    tokens of its own)."""
    task, head_kwargs = tasks.create(config, data_dir=config.dataset.data_dir)
    tokenizer = Tokenizer(config.tokenizer.path)
    model, _ = models.build(config, tokenizer.vocab_size, **head_kwargs)
    params = jax.device_get(
        jax.jit(functools.partial(trainer.init_params, config, model))(jax.random.PRNGKey(0))
    )
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: x + noise * rng.standard_normal(x.shape, x.dtype), params)
    par = parallel.create(config.parallelism)
    data_kwargs = dict(
        data_dir=config.dataset.data_dir,
        process_index=0,
        process_count=1,
        local_device_count=jax.local_device_count(),
    )
    p_eval_step = par.eval_step(steps.eval_step, model=model, task=task)
    return evals.run_eval(
        task, model, p_eval_step, par.place(params), config, tokenizer, data_kwargs, par=par
    )


def _assert_same_metrics(got, want):
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key


def test_seq2seq_decodes_and_scores_on_a_mesh_as_under_pmap(files):
    pmap_metrics, pmap_details = _eval(_seq2seq_config(files, "pmap"), noise=0.3)
    mesh_metrics, mesh_details = _eval(_seq2seq_config(files, "mesh"), noise=0.3)
    texts = [s["prediction"] for s in pmap_details["samples"]]
    assert len(texts) == 10 and len(set(texts)) > 5  # Rows decode to texts of their own...
    assert mesh_details["samples"] == pmap_details["samples"]  # ...the same, row for row.
    _assert_same_metrics(mesh_metrics, pmap_metrics)
    assert {"bleu", "rougeL", "exact_match", "f1"} <= mesh_metrics.keys()


def test_extractive_qa_on_a_mesh_as_under_pmap_and_evaluate_py(files, tmp_path, monkeypatch):
    pmap_metrics, pmap_details = _eval(_qa_config(files, "pmap"))
    mesh_metrics, mesh_details = _eval(_qa_config(files, "mesh"))
    assert pmap_metrics["examples"] == 24 and pmap_metrics["windows"] > 24
    # Each window's logits came back to its own feature: the same answers, question for question.
    assert mesh_details["predictions_sample"] == pmap_details["predictions_sample"]
    _assert_same_metrics(mesh_metrics, pmap_metrics)

    # A mesh-mode run (one step) evaluates in the trainer; evaluate.py's library restores its
    # checkpoint onto the run's mesh and gets the same numbers.
    workdir = str(tmp_path / "qa_mesh")
    result = trainer.train_and_evaluate(_qa_config(files, "mesh"), workdir)
    assert result["step"] == 1 and result["eval"]["examples"] == 24
    evaluated = evaluator.evaluate_checkpoint(workdir, write=False)
    assert evaluated.step == 1
    _assert_same_metrics(evaluated.metrics, result["eval"])

    # On a machine the run's mesh does not fit, evaluate.py falls back to pmap: same numbers.
    def no_mesh(parallelism, kernels=None, attention_setting=None):
        raise config_lib.ConfigError("parallelism: the mesh must cover all 8 devices.")

    monkeypatch.setattr(parallel, "create", no_mesh)
    evaluated = evaluator.evaluate_checkpoint(workdir, write=False)
    _assert_same_metrics(evaluated.metrics, result["eval"])
