"""Older and varied Hugging Face exports import with parity.

Each directory is built offline (transformers 5's `save_pretrained`, the odd files by hand, as
transformers 4.x and older tools wrote them): a 4.x config.json, half-precision weights, sharded
safetensors, names with and without `bert.` / `transformer.`, `pytorch_model.bin` (read only with
`torch.load(weights_only=True)`), `special_tokens_map.json` without `tokenizer_config.json`, a
cased WordPiece `vocab.txt` alone; features ptjax cannot represent are refused by name.
Hidden states and logits match the eager PyTorch reference within 1e-4.
"""

import json
import os
import sys

import jax
import numpy as np
import pytest

from ptjax import models
from ptjax.data.tokenizer import load_tokenizer, tokenizer_file
from ptjax.interop import ConversionError, import_hf, load_hf

torch = pytest.importorskip("torch")
from hf_reference import padded, perturb, tiny_bert_config  # noqa: E402  (after torch is known to be there)

transformers = pytest.importorskip("transformers")

TOL = 1e-4
BERT_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(
    set("abcdefghijklmnopqrstuvwxyz.,!")
    | {"##" + c for c in "abcdefghijklmnopqrstuvwxyz"}
    | {"the", "quick", "brown", "fox", "hello", "world", "cafe", "naive"}
)
GPT2_VOCAB = 300


def _bert(vocab_size: int = len(BERT_TOKENS), seed: int = 0, **kw):
    return perturb(transformers.BertModel(tiny_bert_config(vocab_size, **kw)), seed)


def _gpt2(seed: int = 0):
    config = transformers.GPT2Config(
        vocab_size=GPT2_VOCAB,
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=GPT2_VOCAB - 1,
        eos_token_id=GPT2_VOCAB - 1,
        attn_implementation="eager",
    )
    return perturb(transformers.GPT2LMHeadModel(config), seed)


def _padded(vocab: int, seed: int = 0):
    """(ids, token types, mask): hf_reference.padded with segment B from position 6."""
    ids, mask = padded(vocab, seed)
    types = np.zeros_like(ids)
    types[:, 6:] = 1
    return ids, types, mask


def _bert_diff(hf_model, model) -> float:
    """Max |ptjax - transformers| of BertModel's hidden states and pooled output (real tokens)."""
    ids, types, mask = _padded(hf_model.config.vocab_size)
    with torch.no_grad():
        out = hf_model(
            input_ids=torch.tensor(ids),
            token_type_ids=torch.tensor(types),
            attention_mask=torch.tensor(mask),
        )
    params = jax.tree.map(np.asarray, model.params["bert"])
    ours = models.bert.Bert(model.model_config).apply({"params": params}, ids, types, mask)
    real = mask.astype(bool)
    hidden = np.abs(np.asarray(ours.hidden_states) - out.last_hidden_state.numpy())[real].max()
    pooled = np.abs(np.asarray(ours.pooled) - out.pooler_output.numpy()).max()
    return float(max(hidden, pooled))


def _gpt2_diff(hf_model, model) -> float:
    """Max |ptjax - transformers| of GPT-2's logits (real tokens; causal, right padding)."""
    ids, _, mask = _padded(GPT2_VOCAB, seed=1)
    with torch.no_grad():
        want = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    got = np.asarray(model.module().apply({"params": model.params}, ids))
    return float(np.abs(got - want.numpy())[mask.astype(bool)].max())


def _edit_config(hf_dir, **changes) -> None:
    path = os.path.join(hf_dir, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.pop("dtype", None)  # transformers 5's name for 4.x's torch_dtype.
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


def _config_4x(dtype: str = "float32") -> dict:
    """The keys transformers 4.39 wrote into a BertModel's config.json that 5 does not."""
    return {
        "architectures": ["BertModel"],
        "position_embedding_type": "absolute",
        "gradient_checkpointing": False,
        "use_cache": True,
        "torch_dtype": dtype,
        "transformers_version": "4.39.3",
    }


def _save_state_dict(state: dict, path: str, torch_format: bool) -> None:
    """A state dict as safetensors or as a PyTorch pickle (4.x's safe_serialization=False)."""
    if torch_format:
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, path, metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------------
# Configs and weight files


def test_transformers_4x_bert_config_imports_with_parity(tmp_path):
    hf = _bert()
    hf_dir = str(tmp_path / "hf")
    hf.save_pretrained(hf_dir)
    _edit_config(hf_dir, **_config_4x())
    transformers.BertTokenizer(vocab={t: i for i, t in enumerate(BERT_TOKENS)}).save_pretrained(
        hf_dir
    )
    model = import_hf(hf_dir, str(tmp_path / "run"))
    assert (model.architecture, model.task, model.family) == ("BertModel", "masked_lm", "bert")
    diff = _bert_diff(hf, model)
    print(f"BERT from a 4.x config.json: max diff {diff:.2e}")
    assert diff < TOL
    with open(tmp_path / "run" / "config.hf.json") as f:
        assert json.load(f)["transformers_version"] == "4.39.3"  # Kept as it came.


@pytest.mark.parametrize(
    "dtype, file",
    [("float16", "model.safetensors"), ("bfloat16", "model.safetensors"), ("bfloat16", "bin")],
)
def test_half_precision_weights_import_as_float32(dtype, file, tmp_path):
    hf = _bert().to(getattr(torch, dtype))
    hf_dir = str(tmp_path / "hf")
    hf.save_pretrained(hf_dir)
    if file == "bin":
        os.remove(os.path.join(hf_dir, "model.safetensors"))
        _save_state_dict(hf.state_dict(), os.path.join(hf_dir, "pytorch_model.bin"), True)
    _edit_config(hf_dir, **_config_4x(dtype))
    model = load_hf(hf_dir)
    leaves = jax.tree.leaves(model.params)
    assert {leaf.dtype for leaf in leaves} == {np.dtype(np.float32)}
    diff = _bert_diff(hf.float(), model)  # The same (rounded) weights, in float32.
    print(f"BERT from {dtype} {file}: max diff {diff:.2e}")
    assert diff < TOL


def test_sharded_bert_safetensors_with_index(tmp_path):
    hf = _bert()
    hf_dir = tmp_path / "hf"
    hf.save_pretrained(hf_dir, max_shard_size="50KB")
    with open(hf_dir / "model.safetensors.index.json") as f:
        shards = set(json.load(f)["weight_map"].values())
    assert len(shards) > 1 and not (hf_dir / "model.safetensors").exists()
    assert _bert_diff(hf, load_hf(str(hf_dir))) < TOL


def test_bert_weights_with_and_without_the_bert_prefix(tmp_path):
    hf = _bert()
    plain = str(tmp_path / "plain")
    hf.save_pretrained(plain)  # BertModel: 'embeddings.word_embeddings.weight', ...
    prefixed = str(tmp_path / "prefixed")
    hf.save_pretrained(prefixed)
    state = {f"bert.{k}": v for k, v in hf.state_dict().items()}
    # Older exports also carry the position_ids buffer (transformers < 4.31); it is dropped.
    state["bert.embeddings.position_ids"] = torch.arange(64)[None]
    _save_state_dict(state, os.path.join(prefixed, "model.safetensors"), False)
    a, b = load_hf(plain), load_hf(prefixed)
    assert "dropped: bert.embeddings.position_ids" in b.notes
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    assert _bert_diff(hf, a) < TOL and _bert_diff(hf, b) < TOL


def test_gpt2_weights_with_and_without_the_transformer_prefix(tmp_path):
    hf = _gpt2()
    prefixed = str(tmp_path / "prefixed")
    hf.save_pretrained(prefixed)  # GPT2LMHeadModel: 'transformer.h.0.attn.c_attn.weight', ...
    bare = str(tmp_path / "bare")  # As the published gpt2 files: 'h.0.attn.c_attn.weight', ...
    hf.save_pretrained(bare)
    state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}
    del state["lm_head.weight"]  # Tied to wte, not written.
    _save_state_dict(state, os.path.join(bare, "model.safetensors"), False)
    base = str(tmp_path / "base")
    hf.transformer.save_pretrained(base)  # GPT2Model: no prefix, no lm_head.
    loaded = [load_hf(d) for d in (prefixed, bare, base)]
    assert [m.architecture for m in loaded] == ["GPT2LMHeadModel"] * 2 + ["GPT2Model"]
    for model in loaded:
        jax.tree.map(np.testing.assert_array_equal, model.params, loaded[0].params)
        diff = _gpt2_diff(hf, model)
        print(f"GPT-2 {model.architecture}: logits max diff {diff:.2e}")
        assert diff < TOL


# ---------------------------------------------------------------------------------------------
# pytorch_model.bin


@pytest.fixture
def bin_dir(tmp_path):
    """A BertModel saved as transformers 4.x did with safe_serialization=False."""
    hf = _bert()
    path = tmp_path / "bin"
    hf.save_pretrained(path)
    os.remove(path / "model.safetensors")
    _save_state_dict(hf.state_dict(), str(path / "pytorch_model.bin"), True)
    return str(path), hf


def test_pytorch_bin_is_read_with_weights_only(bin_dir, monkeypatch):
    hf_dir, hf = bin_dir
    calls = []
    load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs)
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    model = load_hf(hf_dir)
    assert calls and all(kwargs.get("weights_only") is True for kwargs in calls)
    assert _bert_diff(hf, model) < TOL


class _Payload:
    """Unpickling it would create a directory: code that a weights-only load must not run."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_pytorch_bin_with_code_is_refused_not_run(bin_dir, tmp_path):
    hf_dir, hf = bin_dir
    marker = str(tmp_path / "payload_ran")
    state = {**hf.state_dict(), "payload": _Payload(marker)}
    torch.save(state, os.path.join(hf_dir, "pytorch_model.bin"))
    with pytest.raises(ValueError, match=r"pytorch_model\.bin holds Python objects.*weights_only"):
        load_hf(hf_dir)
    assert not os.path.exists(marker)
    torch.load(os.path.join(hf_dir, "pytorch_model.bin"), weights_only=False)  # What it would do.
    assert os.path.isdir(marker)


def test_pytorch_bin_that_is_not_a_state_dict_is_named(bin_dir):
    hf_dir, hf = bin_dir
    torch.save({**hf.state_dict(), "epoch": 3}, os.path.join(hf_dir, "pytorch_model.bin"))
    with pytest.raises(ValueError, match=r"pytorch_model\.bin is not a state dict.*'epoch'"):
        load_hf(hf_dir)


def test_pytorch_bin_without_torch_names_torch(bin_dir, monkeypatch):
    hf_dir, _ = bin_dir
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails.
    with pytest.raises(ImportError, match=r"pytorch_model\.bin.*needs torch.*pip install torch"):
        load_hf(hf_dir)


# ---------------------------------------------------------------------------------------------
# Tokenizer files

CUSTOM_SPECIALS = {
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "cls_token": "<cls>",
    "sep_token": "<sep>",
    "mask_token": "<mask>",
}
TEXTS = [
    "Hello world, the quick brown fox!",
    "Café naïve, HELLO",
    "unknown ☃ and Ω",
    "  spaces\tand\nlines ",
]


def _write_vocab_txt(directory, tokens) -> str:
    path = os.path.join(directory, "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")
    return path


def _imported_tokenizer(hf_dir: str, workdir: str):
    import_hf(hf_dir, workdir)
    return load_tokenizer(tokenizer_file(os.path.join(workdir, "tokenizer")))


@pytest.mark.parametrize("files", ["tokenizer.json", "vocab.txt"])
def test_special_tokens_map_without_tokenizer_config(files, tmp_path):
    tokens = [*CUSTOM_SPECIALS.values(), *BERT_TOKENS[5:]]
    vocab = {t: i for i, t in enumerate(tokens)}
    hf_tok = transformers.BertTokenizer(vocab=vocab, **CUSTOM_SPECIALS)
    hf_dir = str(tmp_path / "hf")
    _bert(len(tokens)).save_pretrained(hf_dir)
    hf_tok.save_pretrained(hf_dir)
    os.remove(os.path.join(hf_dir, "tokenizer_config.json"))
    # As 4.x wrote it: some tokens as plain strings, some as AddedToken dicts.
    special_map = {
        k: ({"content": v, "lstrip": False, "normalized": False} if k < "p" else v)
        for k, v in CUSTOM_SPECIALS.items()
    }
    with open(os.path.join(hf_dir, "special_tokens_map.json"), "w") as f:
        json.dump(special_map, f)
    if files == "vocab.txt":
        os.remove(os.path.join(hf_dir, "tokenizer.json"))
        _write_vocab_txt(hf_dir, tokens)
    ours = _imported_tokenizer(hf_dir, str(tmp_path / "run"))
    for text in TEXTS:
        assert ours.encode(text) == hf_tok(text, add_special_tokens=False).input_ids, text
    assert vocab["<unk>"] in ours.encode(TEXTS[2])
    want = (hf_tok.pad_token_id, hf_tok.unk_token_id, hf_tok.cls_token_id, hf_tok.sep_token_id)
    assert (ours.pad_id, ours.unk_id, ours.bos_id, ours.eos_id) == want == (0, 1, 2, 3)
    assert ours.piece_to_id("<mask>") == hf_tok.mask_token_id == 4
    assert ours.vocab_size == len(tokens)


def test_cased_vocab_txt_only_matches_bert_tokenizer(tmp_path):
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZéïöÅÉ.,!"
    words = {"Hello", "hello", "HELLO", "Café", "café", "naïve", "Ångström", "World"}
    tokens = BERT_TOKENS[:5] + sorted(set(chars) | {"##" + c for c in chars} | words)
    hf_dir = tmp_path / "hf"
    _bert(len(tokens)).save_pretrained(hf_dir)
    vocab_txt = _write_vocab_txt(hf_dir, tokens)
    with open(hf_dir / "tokenizer_config.json", "w") as f:
        json.dump({"do_lower_case": False, "tokenizer_class": "BertTokenizer"}, f)
    assert not (hf_dir / "tokenizer.json").exists()
    ours = _imported_tokenizer(str(hf_dir), str(tmp_path / "run"))
    hf_tok = transformers.BertTokenizer(vocab_txt, do_lower_case=False)
    texts = [*TEXTS, "Ångström CAFÉ Café café cafe naïve naive", "HeLLo Wörld ÉÅ"]
    for text in texts:
        assert ours.encode(text) == hf_tok(text, add_special_tokens=False).input_ids, text
    assert ours.encode("Hello") != ours.encode("hello") != ours.encode("HELLO")  # Cased.
    assert [ours.id_to_piece(i) for i in ours.encode("Café naïve")] == ["Café", "naïve"]


# ---------------------------------------------------------------------------------------------
# What ptjax cannot represent


BERT_CONFIG = {
    "model_type": "bert",
    "architectures": ["BertModel"],
    "vocab_size": 40,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 64,
}
GPT2_CONFIG = {
    "model_type": "gpt2",
    "architectures": ["GPT2LMHeadModel"],
    "vocab_size": 40,
    "n_positions": 64,
    "n_embd": 64,
    "n_layer": 2,
    "n_head": 2,
}


@pytest.mark.parametrize(
    "family, key, value",
    [
        ("bert", "position_embedding_type", "relative_key"),
        ("bert", "position_embedding_type", "relative_key_query"),
        ("bert", "hidden_act", "relu"),
        ("bert", "is_decoder", True),
        ("bert", "architectures", ["BertForNextSentencePrediction"]),
        ("gpt2", "activation_function", "relu"),
        ("gpt2", "scale_attn_by_inverse_layer_idx", True),
    ],
)
def test_unrepresentable_features_are_refused_by_name(family, key, value, tmp_path):
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    base = {"bert": BERT_CONFIG, "gpt2": GPT2_CONFIG}[family]
    with open(hf_dir / "config.json", "w") as f:
        json.dump({**base, key: value}, f)
    shown = value[0] if isinstance(value, list) else value
    with pytest.raises(ConversionError, match=rf"config\.json {key}=\W*{shown}"):
        load_hf(str(hf_dir))
    with pytest.raises(ConversionError, match=rf"config\.json {key}="):
        import_hf(str(hf_dir), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
