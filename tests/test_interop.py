"""Hugging Face interop: tiny random HF models -> ptjax workdirs -> HF directories.

Logits (and BERT's hidden states) match the PyTorch reference within 1e-4 with padding, greedy
decoding gives the same tokens, exports load with `from_pretrained` and give the same logits,
HF -> ptjax -> HF is bit-identical, and every tensor is accounted for.
"""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptjax import models
from ptjax.config import load_run_config
from ptjax.data.tokenizer import load_tokenizer, tokenizer_file
from ptjax.decoding import DecodeConfig, sample
from ptjax.interop import (
    ConversionError,
    export_hf,
    hf_t5,
    hf_tokenizers,
    hf_weights,
    import_hf,
    load_hf,
)
from ptjax.models import t5, t5_decoding
from ptjax.run import Run
from ptjax.train.checkpoint import restore_matching_params, restore_params

torch = pytest.importorskip("torch")
from hf_reference import padded, perturb  # noqa: E402  (after torch is known to be there)

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TEXTS = [
    "Hello world, the quick brown fox.",
    "Café naïve résumé Ångström",
    "東京 is big; 北京 too",
    "emoji 😀 and 🚀!",
    "  spaces   and\ttabs\n\nnew lines  ",
    "",
    "[MASK] <|endoftext|> </s> are text here",
]
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world this is a test of the tokenizer",
    "café naïve résumé ångström 東京 北京",
    "in the beginning god created the heaven and the earth",
] * 20


def _tensors(path: str) -> dict[str, np.ndarray]:
    return hf_weights.read_state_dict(path)


def _assert_bit_identical(a_dir: str, b_dir: str) -> None:
    a, b = _tensors(a_dir), _tensors(b_dir)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name


def _workdir_params(workdir: str, **head_kwargs):
    """(model, params) of an imported workdir, read as evaluate.py / generate.py read them."""
    config = load_run_config(workdir)
    tokenizer = load_tokenizer(tokenizer_file(os.path.join(workdir, "tokenizer")))
    model, _ = models.build(config, tokenizer.vocab_size, **head_kwargs)
    dummy = jnp.zeros((1, 8), jnp.int32)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), dummy, dummy, dummy))
    return model, jax.tree.map(jnp.asarray, restore_params(workdir, abstract["params"]))


# ---------------------------------------------------------------------------------------------
# BERT


BERT_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(
    set(" ".join(CORPUS).replace(",", " ").split())
    | set("abcdefghijklmnopqrstuvwxyz.,;!") | {"##" + c for c in "abcdefghijklmnopqrstuvwxyz"}
    | {"東", "京", "北", "cafe", "naive", "##e"}
)  # fmt: skip


def _bert_dir(tmp_path, name: str, cls: str, **kw) -> str:
    vocab = {t: i for i, t in enumerate(BERT_TOKENS)}
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=512,
        max_position_embeddings=64,
        attn_implementation="eager",
        **kw,
    )
    model = perturb(getattr(transformers, cls)(config))
    path = str(tmp_path / name)
    model.save_pretrained(path)
    transformers.BertTokenizer(vocab=vocab).save_pretrained(path)
    return path


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_bert_masked_lm_import_parity_export_round_trip(tmp_path):
    hf_dir = _bert_dir(tmp_path, "hf", "BertForMaskedLM")
    workdir = str(tmp_path / "run")
    import_hf(hf_dir, workdir)
    config = load_run_config(workdir)
    assert (config.task, config.model.family, config.model.size) == ("masked_lm", "bert", "tiny")
    assert config.model.max_len == 64

    hf = transformers.BertForMaskedLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    model, params = _workdir_params(workdir)
    ids, mask = padded(len(BERT_TOKENS))
    types = np.zeros_like(ids)
    types[:, 6:] = 1
    with torch.no_grad():
        out = hf(
            input_ids=torch.tensor(ids),
            token_type_ids=torch.tensor(types),
            attention_mask=torch.tensor(mask),
            output_hidden_states=True,
        )
    logits = model.apply({"params": params}, ids, types, mask)
    hidden = models.bert.Bert(model.config).apply({"params": params["bert"]}, ids, types, mask)
    real = mask.astype(bool)
    hidden_diff = np.abs(np.asarray(hidden.hidden_states) - out.hidden_states[-1].numpy())[real]
    logits_diff = np.abs(np.asarray(logits) - out.logits.numpy())[real]
    print(f"BERT MLM: hidden max diff {hidden_diff.max():.2e}, logits {logits_diff.max():.2e}")
    assert hidden_diff.max() < 1e-4 and logits_diff.max() < 1e-4

    # BertForMaskedLM has no pooler: initialised afresh in the workdir, left out on export.
    out_dir = str(tmp_path / "export")
    assert export_hf(workdir, out_dir) == "BertForMaskedLM"
    _assert_bit_identical(hf_dir, out_dir)
    again = transformers.BertForMaskedLM.from_pretrained(out_dir, attn_implementation="eager")
    with torch.no_grad():
        logits_again = again.eval()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
        logits_orig = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    np.testing.assert_array_equal(logits_again.logits.numpy(), logits_orig.logits.numpy())
    reloaded = transformers.AutoTokenizer.from_pretrained(out_dir)
    assert reloaded("héllo world").input_ids == hf_tokenizer(hf_dir)("héllo world").input_ids


def hf_tokenizer(path: str):
    return transformers.AutoTokenizer.from_pretrained(path)


def test_bert_classifier_import_parity_init_checkpoint_and_export(tmp_path):
    labels = {"0": "ham", "1": "spam", "2": "eggs"}
    hf_dir = _bert_dir(
        tmp_path, "hf", "BertForSequenceClassification", id2label=labels, num_labels=3
    )
    workdir = str(tmp_path / "run")
    import_hf(hf_dir, workdir)
    config = load_run_config(workdir)
    assert (config.task, config.model.num_labels) == ("classification", 3)

    hf = transformers.BertForSequenceClassification.from_pretrained(hf_dir)
    hf.eval()
    model, params = _workdir_params(workdir, num_labels=3)
    ids, mask = padded(len(BERT_TOKENS), seed=1)
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = np.asarray(model.apply({"params": params}, ids, None, mask))
    print(f"BERT classifier: logits max diff {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=1e-4)

    # init_checkpoint: an encoder under a new head (here QA) takes the imported weights.
    qa = models.bert.BertForQuestionAnswering(model.config)
    fresh = qa.init(jax.random.PRNGKey(1), jnp.zeros((1, 8), jnp.int32))["params"]
    restored = restore_matching_params(workdir, jax.device_get(fresh))
    assert restored.fresh == ["span/qa_outputs/bias", "span/qa_outputs/kernel"]
    assert "classification/classifier/kernel" in restored.ignored
    np.testing.assert_array_equal(
        restored.params["bert"]["pooler"]["kernel"], params["bert"]["pooler"]["kernel"]
    )

    out_dir = str(tmp_path / "export")
    assert export_hf(os.path.join(workdir, "checkpoints", "0"), out_dir) == (
        "BertForSequenceClassification"
    )
    _assert_bit_identical(hf_dir, out_dir)
    with open(os.path.join(out_dir, "config.json")) as f:
        assert json.load(f)["id2label"] == labels  # Carried over from the source.


def test_bert_tokenizer_ids_match_hugging_face_from_json_and_vocab_txt(tmp_path):
    vocab = {t: i for i, t in enumerate(BERT_TOKENS)}
    hf = transformers.BertTokenizer(vocab=vocab)
    hf.save_pretrained(tmp_path / "json")
    ours = load_tokenizer(str(tmp_path / "json" / "tokenizer.json"))
    # A directory with only vocab.txt (as older downloads): built the way transformers builds it.
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "vocab.txt").write_text("\n".join(BERT_TOKENS) + "\n")
    hf_tokenizers.build(str(tmp_path / "txt")).save(str(tmp_path / "txt" / "tokenizer.json"))
    from_txt = load_tokenizer(str(tmp_path / "txt" / "tokenizer.json"))
    for text in TEXTS[:-1]:  # HF matches "[MASK]" in text as the special token; ptjax does not.
        want = hf(text, add_special_tokens=False).input_ids
        assert ours.encode(text) == want == from_txt.encode(text), text
    assert ours.encode_batch(TEXTS[:2]) == [ours.encode(t) for t in TEXTS[:2]]
    assert "[MASK]" not in [ours.id_to_piece(i) for i in ours.encode(TEXTS[-1])]
    assert (ours.pad_id, ours.unk_id, ours.bos_id, ours.eos_id) == (
        hf.pad_token_id,
        hf.unk_token_id,
        hf.cls_token_id,
        hf.sep_token_id,
    )
    assert ours.piece_to_id("[MASK]") == hf.mask_token_id and ours.vocab_size == len(vocab)
    ids, spans = ours.encode_with_offsets("Héllo, world")
    assert [ours.id_to_piece(i) for i in ids][:2] == ["hello", ","]
    assert spans[:2] == [(0, 5), (5, 6)]  # Character offsets into the original (accented) text.


# ---------------------------------------------------------------------------------------------
# GPT-2


def _byte_level_bpe(tmp_path):
    """(vocab, merges) of a tiny byte-level BPE with all 256 byte tokens, as GPT-2's."""
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=320, min_frequency=2, special_tokens=[])
    bpe.save_model(str(tmp_path))
    with open(tmp_path / "vocab.json") as f:
        vocab = json.load(f)
    vocab["<|endoftext|>"] = len(vocab)
    with open(tmp_path / "merges.txt") as f:
        merges = [tuple(line.split()) for line in f if line.strip() and not line.startswith("#")]
    return vocab, merges


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("gpt2")
    vocab, merges = _byte_level_bpe(tmp_path)
    config = transformers.GPT2Config(
        vocab_size=len(vocab),
        n_positions=64,
        n_embd=128,
        n_layer=2,
        n_head=4,
        bos_token_id=vocab["<|endoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        attn_implementation="eager",
    )
    model = perturb(transformers.GPT2LMHeadModel(config))
    with torch.no_grad():
        model.transformer.wte.weight.mul_(10.0)  # Peaked next-token distributions: no near-ties.
    path = str(tmp_path / "hf")
    model.save_pretrained(path)
    transformers.GPT2Tokenizer(vocab=vocab, merges=merges).save_pretrained(path)
    return path, model


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_gpt2_import_parity_greedy_generation_and_export(gpt2_dir, tmp_path):
    hf_dir, hf = gpt2_dir
    workdir = str(tmp_path / "run")
    import_hf(hf_dir, workdir)
    config = load_run_config(workdir)
    assert (config.task, config.model.family, config.model.size) == ("causal_lm", "gpt", "tiny")
    from ptjax.train import trainer  # An import is a starting point, not a run to resume.

    with pytest.raises(trainer.WorkdirError, match="--config.init_checkpoint="):
        trainer.check_workdir(workdir)
    model, params = _workdir_params(workdir)
    vocab = model.config.vocab_size
    ids, mask = padded(vocab, seed=2)
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = np.asarray(model.apply({"params": params}, ids))
    real = mask.astype(bool)  # Causal: right padding never changes a real position.
    print(f"GPT-2: logits max diff {np.abs(got - want)[real].max():.2e}")
    np.testing.assert_allclose(got[real], want[real], atol=1e-4)

    # Greedy decoding of left-padded prompts of different lengths vs HF's generate, one by one.
    gen = Run.open(workdir).generator()
    tokenizer = gen.tokenizer
    prompts = [[tokenizer.eos_id] + tokenizer.encode(t) for t in ("hello world", "the quick")]
    prompts.append(prompts[0][:2])
    cfg = DecodeConfig(max_new_tokens=10, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    ours = gen.generate_ids(prompts, cfg)
    for prompt, row in zip(prompts, ours, strict=True):
        with torch.no_grad():
            out = hf.generate(
                torch.tensor([prompt]),
                max_new_tokens=10,
                do_sample=False,
                eos_token_id=tokenizer.eos_id,
                pad_token_id=tokenizer.eos_id,
            )[0, len(prompt) :].tolist()
        assert row == [t for t in out if t != tokenizer.eos_id][: len(row)] and (
            len(row) == 10 or out[len(row)] == tokenizer.eos_id
        )

    out_dir = str(tmp_path / "export")
    assert export_hf(workdir, out_dir) == "GPT2LMHeadModel"
    _assert_bit_identical(hf_dir, out_dir)
    again = transformers.GPT2LMHeadModel.from_pretrained(out_dir, attn_implementation="eager")
    again.eval()
    with torch.no_grad():
        logits = again(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    np.testing.assert_array_equal(logits.numpy(), want)


def test_gpt2_tokenizer_ids_match_and_pad_is_never_emitted(gpt2_dir, tmp_path):
    hf_dir, _ = gpt2_dir
    hf = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ours = load_tokenizer(os.path.join(hf_dir, "tokenizer.json"))
    vocab, merges = _byte_level_bpe(tmp_path)  # The vocab.json + merges.txt route.
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    hf_tokenizers.build(str(tmp_path)).save(str(tmp_path / "tokenizer.json"))
    from_files = load_tokenizer(str(tmp_path / "tokenizer.json"))
    for text in TEXTS[:-1]:
        want = hf(text, add_special_tokens=False).input_ids
        assert ours.encode(text) == want == from_files.encode(text), text
        assert ours.decode(want) == hf.decode(want) == text
    eos = vocab["<|endoftext|>"]
    assert (ours.eos_id, ours.bos_id, ours.unk_id) == (eos, eos, eos) == (hf.eos_token_id,) * 3
    assert not ours.bos_documents  # GPT-2's documents: <|endoftext|> text.
    # No pad token in GPT-2: the byte 0xFF's token, which UTF-8 text never produces.
    assert ours.id_to_piece(ours.pad_id) == "ÿ" and ours.pad_id != eos
    rng = np.random.default_rng(0)
    text = "".join(chr(c) for c in rng.integers(32, 0x2FFFF, 5000) if not 0xD800 <= c < 0xE000)
    assert ours.pad_id not in ours.encode(text + "ÿþ")
    assert eos not in ours.encode("<|endoftext|>")  # Text never becomes a special token.


def test_sharded_and_pytorch_bin_checkpoints_read_alike(gpt2_dir, tmp_path):
    hf_dir, hf = gpt2_dir
    want = load_hf(hf_dir).params
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
    hf.save_pretrained(tmp_path / "bin", safe_serialization=False)
    for name in ("sharded", "bin"):
        got = load_hf(str(tmp_path / name)).params
        jax.tree.map(np.testing.assert_array_equal, got, want)


# ---------------------------------------------------------------------------------------------
# T5


T5_PIECES = 50


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    """A tiny T5 1.0 (tied, relu) of ptjax's 'tiny' shape with a T5-style spiece.model."""
    import io

    import sentencepiece as spm

    tmp_path = tmp_path_factory.mktemp("t5")
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=writer,
        vocab_size=T5_PIECES,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    path = tmp_path / "hf"
    path.mkdir()
    (path / "spiece.model").write_bytes(writer.getvalue())
    config = transformers.T5Config(
        vocab_size=T5_PIECES + 100 + 4,  # Pieces, T5Tokenizer's 100 extra ids, padding (as 32128).
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_((0.05 if name.startswith("shared") else 0.1) * torch.randn_like(p))
    model.eval().save_pretrained(path)
    return str(path), model


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_t5_import_parity_greedy_generation_and_export(t5_dir, tmp_path):
    hf_dir, hf = t5_dir
    workdir = str(tmp_path / "run")
    import_hf(hf_dir, workdir)
    config = load_run_config(workdir)
    assert (config.task, config.model.size, config.seq2seq.extra_ids) == ("seq2seq", "tiny", 104)
    tokenizer = load_tokenizer(tokenizer_file(os.path.join(workdir, "tokenizer")))
    assert tokenizer.path.endswith("spm.model") and tokenizer.bos_id == -1
    cfg = models.MODELS["t5"].make_config(config, tokenizer.vocab_size)
    model = t5.T5(cfg)
    dummy = jnp.zeros((1, 8), jnp.int32)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), dummy, dummy))["params"]
    params = jax.tree.map(jnp.asarray, restore_params(workdir, abstract))

    enc, enc_mask = padded(cfg.vocab_size, seed=3, length=14)
    dec, dec_mask = padded(cfg.vocab_size, seed=4, length=9)
    dec[:, 0] = t5.DECODER_START_ID
    with torch.no_grad():
        want = hf(
            input_ids=torch.tensor(enc),
            attention_mask=torch.tensor(enc_mask),
            decoder_input_ids=torch.tensor(dec),
            decoder_attention_mask=torch.tensor(dec_mask),
        ).logits.numpy()
    got = np.asarray(model.apply({"params": params}, enc, dec, enc_mask, dec_mask))
    real = dec_mask.astype(bool)
    print(f"T5 1.0: logits max diff {np.abs(got - want)[real].max():.2e}")
    np.testing.assert_allclose(got[real], want[real], atol=1e-4)

    prefill, step = t5_decoding.decode_fns(model, 8)
    decode_cfg = DecodeConfig(max_new_tokens=8, eos_id=1, pad_id=0)
    tokens, lengths = jax.jit(lambda p, x, m: sample(prefill, step, p, x, m, None, decode_cfg))(
        params, jnp.asarray(enc), jnp.asarray(enc_mask, bool)
    )
    with torch.no_grad():
        hf_tokens = hf.generate(
            input_ids=torch.tensor(enc),
            attention_mask=torch.tensor(enc_mask),
            max_new_tokens=8,
            do_sample=False,
            decoder_start_token_id=t5.DECODER_START_ID,
            eos_token_id=1,
            pad_token_id=0,
        )[:, 1:]
    for row, n, hf_row in zip(np.asarray(tokens), np.asarray(lengths), hf_tokens, strict=True):
        assert row[:n].tolist() == hf_row[:n].tolist()

    out_dir = str(tmp_path / "export")
    assert export_hf(workdir, out_dir) == "T5ForConditionalGeneration"
    _assert_bit_identical(hf_dir, out_dir)
    again = transformers.T5ForConditionalGeneration.from_pretrained(
        out_dir, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        logits = again(
            input_ids=torch.tensor(enc),
            attention_mask=torch.tensor(enc_mask),
            decoder_input_ids=torch.tensor(dec),
            decoder_attention_mask=torch.tensor(dec_mask),
        ).logits.numpy()
    np.testing.assert_array_equal(logits, want)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out_dir)
    assert hf_tok.convert_tokens_to_ids("<extra_id_0>") == T5_PIECES + 99
    for text in TEXTS[:-1]:
        assert tokenizer.encode(text) == hf_tok(text, add_special_tokens=False).input_ids, text


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_t5_v1_1_gated_untied_parity_and_round_trip(tmp_path):
    config = transformers.T5Config(
        vocab_size=50,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    torch.manual_seed(1)
    hf = transformers.T5ForConditionalGeneration(config)
    hf.lm_head.weight = torch.nn.Parameter(torch.randn(50, 32) * 32**-0.5)  # Its own head.
    hf = perturb(hf, seed=1)
    hf.save_pretrained(tmp_path / "hf")
    loaded = load_hf(str(tmp_path / "hf"))
    assert loaded.model_config.feed_forward == "gated-gelu"
    assert not loaded.model_config.tie_word_embeddings and "lm_head" in loaded.params
    enc, enc_mask = padded(50, seed=5, length=10)
    dec, dec_mask = padded(50, seed=6, length=7)
    dec[:, 0] = 0
    with torch.no_grad():
        want = hf(
            input_ids=torch.tensor(enc),
            attention_mask=torch.tensor(enc_mask),
            decoder_input_ids=torch.tensor(dec),
        ).logits.numpy()
    got = loaded.module().apply({"params": loaded.params}, enc, dec, enc_mask)
    print(f"T5 1.1: logits max diff {np.abs(np.asarray(got) - want).max():.2e}")
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)

    # No ptjax size has this shape: the run config is the nearest size (1.1's) with
    # model.<shape key> overrides; what no run config can say (a norm epsilon) is refused.
    from ptjax.interop import convert

    config = convert.run_config(loaded, tokenizer_vocab=40)
    assert config.model.size.startswith("v1_1_") and config.model.d_model == 32
    assert config.seq2seq.extra_ids == 10
    assert models.MODELS["t5"].make_config(config) == loaded.model_config
    other = dataclasses.replace(
        loaded, model_config=dataclasses.replace(loaded.model_config, layer_norm_eps=1e-5)
    )
    with pytest.raises(ConversionError, match="matches none of ptjax's t5 sizes.*layer_norm_eps"):
        convert.run_config(other, tokenizer_vocab=40)
    state, arch = hf_t5.params_to_hf(loaded.params, loaded.model_config)
    (tmp_path / "out").mkdir()
    hf_weights.write_model(str(tmp_path / "out"), hf_t5.hf_config(loaded.model_config, arch), state)
    _assert_bit_identical(str(tmp_path / "hf"), str(tmp_path / "out"))
    again = transformers.T5ForConditionalGeneration.from_pretrained(
        tmp_path / "out", attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        logits = again(
            input_ids=torch.tensor(enc),
            attention_mask=torch.tensor(enc_mask),
            decoder_input_ids=torch.tensor(dec),
        ).logits.numpy()
    np.testing.assert_array_equal(logits, want)


# ---------------------------------------------------------------------------------------------
# Refusals


def test_missing_unexpected_misshaped_and_untied_tensors_are_named(gpt2_dir, tmp_path):
    from safetensors.numpy import save_file

    hf_dir, _ = gpt2_dir
    state = _tensors(hf_dir)

    def converts(tensors: dict) -> None:
        path = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        path.mkdir()
        shutil.copyfile(os.path.join(hf_dir, "config.json"), path / "config.json")
        save_file(tensors, str(path / "model.safetensors"))
        load_hf(str(path))

    name = "transformer.h.1.mlp.c_fc.bias"
    with pytest.raises(ConversionError, match=rf"missing: {name}"):
        converts({k: v for k, v in state.items() if k != name})
    with pytest.raises(ConversionError, match=r"unexpected .*transformer\.h\.2\.ln_1\.weight"):
        converts({**state, "transformer.h.2.ln_1.weight": state[name][:128]})
    with pytest.raises(ConversionError, match=rf"{name} has shape \(511,\), expected \(512,\)"):
        converts({**state, name: state[name][:-1]})
    wte = state["transformer.wte.weight"]
    with pytest.raises(ConversionError, match="lm_head.weight: must be a copy of"):
        converts({**state, "lm_head.weight": wte + 1})
    converts({**state, "lm_head.weight": wte.copy(), "transformer.h.0.attn.bias": np.ones(3)})


def test_conversions_never_write_into_a_non_empty_directory(gpt2_dir, tmp_path):
    hf_dir, _ = gpt2_dir
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        import_hf(hf_dir, str(occupied))
    workdir = str(tmp_path / "run")
    (tmp_path / "run").mkdir()  # An empty directory is fine.
    import_hf(hf_dir, workdir)
    with pytest.raises(FileExistsError, match="not an empty directory"):
        import_hf(hf_dir, workdir)
    with pytest.raises(FileExistsError, match="not an empty directory"):
        export_hf(workdir, str(occupied))
    with pytest.raises(ValueError, match="is a Hugging Face model directory"):
        export_hf(hf_dir, str(tmp_path / "never"))
    assert os.listdir(occupied) == ["notes.txt"] and (occupied / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["occupied", "run"]  # No temporary directories left.
