"""LoRA fine-tuning through the trainer (config finetune.lora) on 8 fake devices: only the adapters
and the new head train and are checkpointed, the base is read and never written, a resume
continues exactly, the mesh gives the pmap run's losses, evaluation, inference and the Hugging
Face export see the merged model, equal to the unmerged one within 1e-5; for BERT, GPT and T5."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from test_train_e2e import snapshot

from ptjax.config import ConfigError
from ptjax.config_presets import bert_classification_config, bert_config, gpt_config, t5_config
from ptjax.models import lora
from ptjax.run import Run
from ptjax.text_classifier import TextClassifier
from ptjax.text_embedder import TextEmbedder
from ptjax.train import adaptation, checkpoint, trainer
from ptjax.train.evaluator import evaluate_checkpoint
from ptjax.train.state import join_params


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _small(config, data_dir, steps):
    config.dataset.data_dir = data_dir
    config.model.size = "tiny"
    config.seq_len = 32
    config.per_device_batch_size = 1  # x 8 fake devices.
    config.total_steps = config.eval_every_steps = config.checkpoint_every_steps = steps
    config.optimizer.warmup_steps = 1
    config.log_every_steps = 1
    config.dataset.shuffle_buffer = 64
    config.dataset.max_eval_batches = 2
    config.tokenizer.vocab_size = 400
    config.tokenizer.max_sentences = 1500
    return config


@pytest.fixture(scope="module")
def bert_base(tmp_path_factory, data_dir):
    workdir = str(tmp_path_factory.mktemp("bert_mlm"))
    trainer.train_and_evaluate(_small(bert_config("tiny"), data_dir, 4), workdir)
    return workdir


def _lora_classifier(base, data_dir, steps=6, **lora_keys):
    config = _small(bert_classification_config("tiny"), data_dir, steps)
    config.init_checkpoint = base
    config.eval_every_steps = config.checkpoint_every_steps = 3
    config.best_metric, config.best_metric_mode = "loss", "min"
    config.dataset.max_eval_batches = 0  # The whole split, as evaluate_checkpoint reads it.
    config.finetune.lora.rank = 4
    config.finetune.lora.dropout = 0.1
    for key, value in lora_keys.items():
        setattr(config.finetune.lora, key, value)
    return config


def _size(directory):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(directory) for f in fs)


def _inputs(vocab, rows=4, length=24):
    ids = np.asarray(jax.random.randint(jax.random.PRNGKey(5), (rows, length), 5, vocab), np.int32)
    return ids, np.zeros_like(ids), np.ones_like(ids)


def test_lora_classifier_trains_adapters_only_resumes_exactly_and_exports_merged(
    bert_base, data_dir, tmp_path
):
    before = snapshot(bert_base)
    config = _lora_classifier(bert_base, data_dir)
    workdir = str(tmp_path / "lora")
    trainer.train_and_evaluate(config, workdir, stop_after_steps=3)
    resumed = trainer.train_and_evaluate(config, workdir)
    straight = trainer.train_and_evaluate(config, str(tmp_path / "straight"))
    assert resumed["step"] == 6
    assert resumed["train"]["loss"] == straight["train"]["loss"]  # Adapter dropout included.
    assert resumed["eval"] == straight["eval"]
    assert snapshot(bert_base) == before  # The base is only read.

    # The checkpoint holds the adapters and the new head; run.json the base.
    base_dir = str(checkpoint.absolute(bert_base) / "checkpoints" / "4")
    run = Run.open(workdir)
    assert run.facts["lora"] == {
        "base": base_dir,
        "rank": 4,
        "alpha": 16.0,
        "targets": ["query", "value"],
    }
    step_dir = os.path.join(workdir, "checkpoints", "6")
    names = {"/".join(p) for p in traverse_util.flatten_dict(checkpoint.saved_params(step_dir))}
    assert {n for n in names if not lora.is_adapter(n.split("/"))} == {
        "classification/classifier/bias",
        "classification/classifier/kernel",
    }
    assert len([n for n in names if n.endswith("lora_a")]) == 4  # 2 layers x query, value.
    # No base parameters, and no optimizer state for them.
    assert _size(step_dir) < 0.25 * _size(base_dir)

    # Merged: untargeted kernels are the base's bit for bit; targeted ones moved.
    model, model_config = run.build()
    merged = run.restore_params(model, "6")
    base_params = traverse_util.flatten_dict(checkpoint.saved_params(base_dir))
    flat = traverse_util.flatten_dict(merged)
    key = ("bert", "layer_0", "attention", "key", "kernel")
    query = ("bert", "layer_0", "attention", "query", "kernel")
    np.testing.assert_array_equal(flat[key], base_params[key])
    assert np.max(np.abs(flat[query] - base_params[query])) > 0

    # Unmerged (as trained) and merged outputs agree within 1e-5.
    spec = adaptation.spec(run.config)
    base_tree = checkpoint.restore_matching_params(base_dir, merged).params
    unmerged = join_params(base_tree, checkpoint.saved_params(step_dir))
    ids, types, mask = _inputs(model_config.vocab_size)
    with lora.applied(spec, train=False):
        want = model.apply({"params": unmerged}, ids, types, mask, deterministic=True)
    got = model.apply({"params": merged}, ids, types, mask, deterministic=True)
    np.testing.assert_allclose(got, want, atol=1e-5)

    # Evaluation and inference see the merged model.
    evaluated = evaluate_checkpoint(workdir, checkpoint="6", write=False)
    np.testing.assert_allclose(evaluated.metrics["loss"], resumed["eval"]["loss"], rtol=1e-6)
    classifier = TextClassifier.from_workdir(workdir, "6")
    probs = classifier.predict_proba(["win a free prize now", "lunch at noon?"])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(-1), 1.0)
    embedder = TextEmbedder.from_workdir(workdir, "6")
    np.testing.assert_array_equal(  # The adapted encoder.
        embedder.params["layer_0"]["attention"]["query"]["kernel"], flat[query]
    )
    assert embedder(["win a free prize now"]).shape == (1, model_config.d_model)

    # The export is the merged model, as transformers computes it.
    import torch
    import transformers

    from ptjax.interop import convert

    out = str(tmp_path / "hf")
    assert convert.export_hf(workdir, out) == "BertForSequenceClassification"
    hf = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    assert hf.config.id2label == {0: "ham", 1: "spam"}  # run.json's label names.
    with torch.no_grad():
        logits = hf(
            input_ids=torch.tensor(ids, dtype=torch.long),
            token_type_ids=torch.tensor(types, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
        ).logits.numpy()
    np.testing.assert_allclose(logits, want, atol=1e-5)


def test_lora_mistakes_are_named_and_change_nothing(bert_base, data_dir, tmp_path):
    config = _lora_classifier(bert_base, data_dir, steps=2)
    config.init_checkpoint = ""
    with pytest.raises(ConfigError, match="finetune.lora.rank=4 adapts a trained model"):
        trainer.train_and_evaluate(config, str(tmp_path / "no_base"))
    with pytest.raises(ConfigError, match="'qkv'"):
        trainer.train_and_evaluate(
            _lora_classifier(bert_base, data_dir, targets="query,qkv"), str(tmp_path / "bad")
        )
    assert not os.path.exists(tmp_path / "no_base") and not os.path.exists(tmp_path / "bad")

    # A LoRA run on a copy of the base, which then moves away.
    base = str(tmp_path / "base_copy")
    shutil.copytree(bert_base, base)
    config = _lora_classifier(base, data_dir, steps=2)
    config.eval_every_steps = config.checkpoint_every_steps = 2
    workdir = str(tmp_path / "lora")
    trainer.train_and_evaluate(config, workdir)

    follow = _lora_classifier(workdir, data_dir, steps=2)  # A LoRA run is no base.
    with pytest.raises(ConfigError, match="is a LoRA run"):
        trainer.train_and_evaluate(follow, str(tmp_path / "on_lora"))
    follow.finetune.lora.rank = 0  # Nor a full fine-tune's start.
    with pytest.raises(ConfigError, match="is a LoRA run"):
        trainer.train_and_evaluate(follow, str(tmp_path / "on_lora"))

    os.rename(base, base + ".moved")
    before = snapshot(workdir)
    with pytest.raises(FileNotFoundError, match="base_copy/checkpoints/4 .*does not exist"):
        evaluate_checkpoint(workdir, write=False)
    config.total_steps = 4
    with pytest.raises(FileNotFoundError, match="recorded in its run.json"):
        trainer.train_and_evaluate(config, workdir)
    assert snapshot(workdir) == before


def test_lora_on_a_mesh_gives_the_pmap_losses(bert_base, data_dir, tmp_path):
    config = _lora_classifier(bert_base, data_dir, steps=3, dropout=0.0, targets="query,out,wi")
    config.model.dropout_rate = 0.0  # pmap and mesh draw dropout masks differently.
    config.best_metric = ""
    pmap = trainer.train_and_evaluate(config, str(tmp_path / "pmap"))
    config.parallelism.mode = "mesh"
    config.parallelism.data, config.parallelism.fsdp, config.parallelism.tensor = 2, 2, 2
    mesh = trainer.train_and_evaluate(config, str(tmp_path / "mesh"))
    np.testing.assert_allclose(mesh["train"]["loss"], pmap["train"]["loss"], rtol=1e-5)
    np.testing.assert_allclose(mesh["eval"]["loss"], pmap["eval"]["loss"], rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt", "t5"])
def test_lora_decoders_train_merge_and_serve(family, data_dir, tmp_path):
    if family == "gpt":
        base_config = gpt_config("tiny")
        tune = gpt_config("tiny")
    else:  # One encoder and one decoder block: T5 is the suite's slowest model to compile.
        base_config = t5_config("tiny")
        tune = t5_config("tiny", "seq2seq")
        base_config.model.num_layers = tune.model.num_layers = 1
    base = str(tmp_path / "base")
    trainer.train_and_evaluate(_small(base_config, data_dir, 2), base)
    config = _small(tune, data_dir, 2)
    config.init_checkpoint = base
    config.finetune.lora.rank = 2
    config.finetune.lora.targets = "query,key,value,out,wi,wo"
    config.model.scan_layers = family == "gpt"  # One adapter per layer of a scanned stack.
    workdir = str(tmp_path / "lora")
    result = trainer.train_and_evaluate(config, workdir)
    assert result["step"] == 2 and np.isfinite(result["eval"]["loss"])

    run = Run.open(workdir)
    model, model_config = run.build()
    merged = run.restore_params(model, "2")
    unmerged = join_params(
        checkpoint.restore_matching_params(run.facts["lora"]["base"], merged).params,
        checkpoint.saved_params(os.path.join(workdir, "checkpoints", "2")),
    )
    ids = jnp.asarray(_inputs(model_config.vocab_size, rows=2, length=12)[0])
    inputs = (ids,) if family == "gpt" else (ids, ids)
    with lora.applied(adaptation.spec(run.config), train=False):
        want = model.apply({"params": unmerged}, *inputs)
    np.testing.assert_allclose(model.apply({"params": merged}, *inputs), want, atol=1e-5)
    assert isinstance(run.generator().generate(["In the beginning"], max_new_tokens=4)[0], str)
