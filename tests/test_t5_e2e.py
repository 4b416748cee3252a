"""T5 through the shared trainer on 8 fake devices: span-corruption pretraining on the bundled
corpus, then en->es fine-tuning from that checkpoint (the whole model restored)."""

import json
import os

import numpy as np
import pytest
from test_train_e2e import read_scalars, snapshot

from ptjax.config import ConfigError
from ptjax.config_presets import t5_config
from ptjax.run import Run
from ptjax.train import trainer


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _small(config, data_dir, steps=4):
    config.dataset.data_dir = data_dir
    config.model.num_layers = 1  # One encoder and one decoder block: tasks under test, not depth.
    config.seq_len = 32
    config.per_device_batch_size = 1  # x 8 fake devices.
    config.total_steps = config.eval_every_steps = config.checkpoint_every_steps = steps
    config.optimizer.warmup_steps = 1
    config.log_every_steps = 2
    config.dataset.shuffle_buffer = 64
    config.dataset.max_eval_batches = 2
    return config


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_dir):
    config = _small(t5_config("tiny"), data_dir)
    config.tokenizer.vocab_size = 400
    config.tokenizer.max_sentences = 1500
    workdir = str(tmp_path_factory.mktemp("t5_spans"))
    return workdir, trainer.train_and_evaluate(config, workdir)


def test_span_corruption_pretraining(pretrained):
    workdir, result = pretrained
    assert result["step"] == 4
    assert np.isfinite(result["eval"]["loss"]) and 0.0 <= result["eval"]["accuracy"] <= 1.0
    assert {"train/loss", "eval/loss", "eval/perplexity"} <= set(read_scalars(workdir))


def test_en_es_fine_tuning_from_the_pretrained_run(pretrained, data_dir, tmp_path):
    source, _ = pretrained
    before = snapshot(source)
    config = _small(t5_config("tiny", "seq2seq"), data_dir)
    config.init_checkpoint = source
    config.seq2seq.metrics = "bleu,rouge,squad"  # Every text metric, on beam-searched outputs.
    config.seq2seq.num_beams = 2
    workdir = str(tmp_path / "en_es")
    result = trainer.train_and_evaluate(config, workdir)
    assert result["step"] == 4 and np.isfinite(result["eval"]["loss"])
    names = ("bleu", "rouge1", "rouge2", "rougeL", "rougeLsum", "exact_match", "f1")
    assert all(0.0 <= result["eval"][n] <= 100.0 for n in names)  # Every eval example decoded.
    assert snapshot(source) == before
    with open(os.path.join(workdir, "results", "validation_step_4.json")) as f:
        samples = json.load(f)["samples"]
    assert len(samples) == 10 and all(s["references"][0] for s in samples)  # Spanish verses.
    assert {f"eval/{n}" for n in names} <= set(read_scalars(workdir))
    texts = _read_texts(workdir)  # A few decoded examples in TensorBoard's text plugin.
    assert samples[0]["prediction"] in texts["eval/samples"][4]
    assert samples[0]["references"][0] in texts["eval/samples"][4]
    # generate.py's Generator reads the T5 run: prompts are encoder inputs with the run's prefix.

    gen = Run.open(workdir).generator()
    assert gen.encoder_decoder and gen.input_prefix == "translate English to Spanish: "
    ids = gen.encode_prompts(["In the beginning", "translate English to Spanish: In the beginning"])
    assert ids[0] == ids[1] and ids[0][-1] == gen.tokenizer.eos_id
    out = gen.generate(["In the beginning", "And God said"], max_new_tokens=6)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    assert gen.generate(["In the beginning", "And God said"], max_new_tokens=6) == out
    # The model holds the tokenizer's 400 pieces plus 100 sentinel ids.
    from ptjax.train.checkpoint import restore_params

    params = restore_params(workdir, _abstract(config))
    assert params["shared"]["embedding"].shape[0] == 500


def _read_texts(workdir):
    """{tag: {step: text}} of the run's TensorBoard text summaries."""
    import glob

    from ptjax.data.tf_setup import import_tf

    tf = import_tf()
    out = {}
    for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "text":
                    text = tf.make_ndarray(value.tensor).item().decode("utf-8")
                    out.setdefault(value.tag, {})[event.step] = text
    return out


def _abstract(config):
    import jax

    from ptjax import models

    model, _ = models.build(config, 400)
    return jax.eval_shape(lambda: trainer.init_params(config, model, jax.random.PRNGKey(0)))


def test_bad_seq2seq_metrics_are_config_errors_before_anything_is_written(data_dir, tmp_path):
    config = _small(t5_config("tiny", "seq2seq"), data_dir)
    config.seq2seq.metrics = "bleu,meteor"
    with pytest.raises(ConfigError, match="seq2seq.metrics='bleu,meteor'"):
        trainer.train_and_evaluate(config, str(tmp_path / "x"))
    assert not os.path.exists(tmp_path / "x")


def test_t5_refuses_tasks_of_other_families(data_dir, tmp_path):
    config = _small(t5_config("tiny"), data_dir)
    config.task = "masked_lm"
    with pytest.raises(ConfigError, match="cannot run task='masked_lm'"):
        trainer.train_and_evaluate(config, str(tmp_path / "x"))
    assert not os.path.exists(tmp_path / "x")


def test_bleu_statistics_summed_over_shards_give_the_corpus_bleu():
    """What Seq2SeqWithDecoding does across processes: add sacrebleu's sufficient statistics."""
    from sacrebleu.metrics import BLEU

    predictions = ["En el principio creó Dios los cielos", "y la tierra estaba desordenada",
                   "Y dijo Dios: Sea la luz", "y fue la luz"]  # fmt: skip
    references = ["En el principio creó Dios los cielos y la tierra",
                  "Y la tierra estaba desordenada y vacía", "Y dijo Dios: Sea la luz: y fué la luz",
                  "Y vió Dios que la luz era buena"]  # fmt: skip
    bleu = BLEU()
    whole = bleu.corpus_score(predictions, [references]).score
    shards = [
        np.sum(bleu._extract_corpus_statistics(predictions[i : i + 2], [references[i : i + 2]]), 0)
        for i in (0, 2)
    ]
    summed = bleu._compute_score_from_stats((shards[0] + shards[1]).tolist()).score
    assert summed == pytest.approx(whole) and 0 < whole < 100
