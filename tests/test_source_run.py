"""A fine-tune takes the model shape of its init_checkpoint's run (ptjax.train.source_run):
GPT-2 and T5 imports and a ptjax run of its own; BERT end to end is in test_bert_e2e.py."""

import dataclasses
import json
import os

import jax
import pytest

from ptjax import config_presets, models
from ptjax.config import ConfigError, base_config
from ptjax.data.tokenizer import train_tokenizer
from ptjax.interop import import_hf
from ptjax.run import validate
from ptjax.train import source_run
from ptjax.train.checkpoint import restore_matching_params
from ptjax.train.state import init_params

torch = pytest.importorskip("torch")
from hf_reference import perturb  # noqa: E402  (after torch is known to be there)

transformers = pytest.importorskip("transformers")


def _save(model, path):
    perturb(model).save_pretrained(path)


def _fits(config, workdir, vocab):
    """Builds the adopted config's model and restores the source's parameters into it."""
    validate(config)
    model, _ = models.build(config, vocab)
    fresh = jax.device_get(init_params(config, model, jax.random.PRNGKey(0)))
    restored = restore_matching_params(workdir, fresh)
    assert not restored.fresh, restored.fresh
    return restored


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_gpt2_import_shape_is_taken_and_contradictions_refused(tmp_path):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models

    vocab = {chr(c): i for i, c in enumerate(range(97, 97 + 26))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(tok_models.BPE(vocab, [], continuing_subword_prefix="", fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf_dir = tmp_path / "gpt2"
    config = transformers.GPT2Config(
        vocab_size=len(vocab), n_positions=48, n_embd=96, n_layer=3, n_head=3, n_inner=160
    )
    _save(transformers.GPT2LMHeadModel(config), hf_dir)
    tok.save(str(hf_dir / "tokenizer.json"))
    (hf_dir / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<|endoftext|>", "pad_token": "z"})
    )
    workdir = str(tmp_path / "imported")
    import_hf(str(hf_dir), workdir)

    fine = config_presets.gpt_config("small")  # 12 x 768, 1024 positions, 50257 tokens.
    fine.init_checkpoint = workdir
    fine.seq_len = 32
    adopted, taken = source_run.adopt_source_shape(fine, str(tmp_path / "new"))
    assert taken == [
        "model.num_layers=3",
        "model.d_model=96",
        "model.num_heads=3",
        "model.d_ff=160",
        "model.vocab_size=27",
        "model.max_len=48",
    ]
    assert fine.model.num_layers == 0  # The caller's config is left as it was.
    _fits(adopted, workdir, 27)
    fine.model.num_heads = 4
    with pytest.raises(ConfigError, match=r"model.num_heads=4 contradicts .*num_heads=3"):
        source_run.adopt_source_shape(fine, str(tmp_path / "new"))
    fine.model.num_heads = 3  # Agreeing with the source is fine.
    assert source_run.adopt_source_shape(fine, str(tmp_path / "new"))[1][0] == "model.num_layers=3"
    bert = config_presets.bert_config("tiny")
    bert.init_checkpoint = workdir
    with pytest.raises(ConfigError, match="is a 'gpt' run"):
        source_run.adopt_source_shape(bert, str(tmp_path / "new"))


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_t5_import_shape_and_variant(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers import models as tok_models

    hf_dir = tmp_path / "t5"
    config = transformers.T5Config(
        vocab_size=64, d_model=48, d_kv=8, d_ff=96, num_layers=2, num_decoder_layers=3,
        num_heads=4, feed_forward_proj="relu", tie_word_embeddings=True,
        decoder_start_token_id=0,
    )  # fmt: skip
    _save(transformers.T5ForConditionalGeneration(config), hf_dir)
    pieces = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"p{i}": i for i in range(3, 64)}}
    Tokenizer(tok_models.WordLevel(pieces, unk_token="<unk>")).save(str(hf_dir / "tokenizer.json"))
    (hf_dir / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"})
    )
    workdir = str(tmp_path / "imported")
    model = import_hf(str(hf_dir), workdir)
    fine = config_presets.t5_config("base", task="seq2seq")
    fine.init_checkpoint = workdir
    fine.seq_len = 32
    fine.seq2seq.extra_ids = 0  # The checkpoint's 64 ids are all the tokenizer's.
    adopted, taken = source_run.adopt_source_shape(fine, str(tmp_path / "new"))
    assert "model.num_layers=2" in taken and "model.num_decoder_layers=3" in taken
    assert "model.d_kv=8" in taken and "model.vocab_size=64" in taken
    got = models.MODELS["t5"].make_config(adopted)
    want = dataclasses.replace(model.model_config, dropout_rate=got.dropout_rate)
    assert got == want
    _fits(adopted, workdir, 64)
    fine.model.size = "v1_1_base"  # Gated GELU and an untied head: another architecture.
    with pytest.raises(ConfigError, match=r"feed_forward='gated-gelu' \(source: 'relu'\)"):
        source_run.adopt_source_shape(fine, str(tmp_path / "new"))


def test_a_ptjax_runs_shape_and_a_resume_whose_source_is_gone(tmp_path):
    source = tmp_path / "pretrain"
    (source / "tokenizer").mkdir(parents=True)
    texts = ["in the beginning god created the heaven and the earth"] * 50
    train_tokenizer(texts, str(source / "tokenizer" / "spm.model"), vocab_size=276)
    config = base_config()
    config.model.num_layers = 3
    config.model.d_ff = 256
    (source / "config.json").write_text(json.dumps(config.to_dict()))
    fine = base_config()
    fine.model.size = "bench"
    fine.init_checkpoint = str(source / "checkpoints" / "100")  # A step directory in the run.
    new = tmp_path / "fine"
    adopted, taken = source_run.adopt_source_shape(fine, str(new))
    # From the source: tiny's width and heads with its own depth and d_ff, its tokenizer's size.
    assert taken == [
        "model.num_layers=3",
        "model.d_model=128",
        "model.d_ff=256",
        "model.vocab_size=276",
    ]  # bench has 4 heads and 256 positions too.
    # The source is gone, the fine-tune's own config.json recorded what it took.
    new.mkdir()
    (new / "config.json").write_text(json.dumps(adopted.to_dict()))
    os.rename(source, tmp_path / "moved")
    again, taken_again = source_run.adopt_source_shape(fine, str(new))
    assert again.model.to_dict() == adopted.model.to_dict() and taken_again == taken
    plain = base_config()
    plain.init_checkpoint = str(tmp_path / "nowhere")
    assert source_run.adopt_source_shape(plain, str(tmp_path / "other")) == (plain, [])
