"""Llama 2's sentencepiece tokenizer.model (unk 0, bos 1, eos 2, no pad piece, byte fallback,
dummy prefix), trained tiny and offline: ptjax's Tokenizer reads those ids from the model, pads
with unk, encodes as transformers 5's LlamaTokenizer does (which differs from sentencepiece on
texts that start with whitespace), and an HF Llama directory with only a tokenizer.model
imports with it and exports it again as tokenizer.model for LlamaTokenizer. Its tokenizer.json
(Llama 2 ships both) gives the same ids and pad through HFTokenizer."""

import importlib.resources
import io
import json
import logging
import lzma
import os
import shutil

import pytest
import sentencepiece as spm

from ptjax.data.tokenizer import Tokenizer, load_tokenizer, tokenizer_file

transformers = pytest.importorskip("transformers")

VOCAB = 320
# Shaped like Llama 2's tokenizer_config.json (meta-llama/Llama-2-7b-hf), less its padding side
# and lengths.
LLAMA2_CONFIG = {
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": {"__type": "AddedToken", "content": "<s>", "normalized": True},
    "eos_token": {"__type": "AddedToken", "content": "</s>", "normalized": True},
    "unk_token": {"__type": "AddedToken", "content": "<unk>", "normalized": True},
    "legacy": False,
    "pad_token": None,
    "tokenizer_class": "LlamaTokenizer",
}
TEXTS = [
    "In the beginning, God created the heavens and the earth.",
    "Hello world",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "",
    " ",
    "   ",
    "a\nb\n\nc",
    "\n",
    "end of line.\n",
    "\tTab first",
    "x  y   z",
    "12345 6.78 -90",
    "Café naïve 東京 😀",
    "ÿ \u3000wide \xa0nbsp",
    "<s> </s> <unk> are text, not specials",
    "\u2581already marked",
    " \u2581both",
    "God’s “quoted” words",
]


def _train(lines, **settings) -> bytes:
    """A sentencepiece model as Llama 2's was trained (BPE, digits split, identity), bytes."""
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=writer,
        model_type="bpe",
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        character_coverage=0.995,  # Rare characters are bytes, as in Llama 2.
        minloglevel=2,
        **settings,
    )
    return writer.getvalue()


@pytest.fixture(scope="module")
def corpus():
    resource = importlib.resources.files("ptjax.data") / "assets" / "web_bible.txt.xz"
    with lzma.open(resource.open("rb"), "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(300)]
    return lines + ["Numbers 0123456789 and 3.14", "  indented\tline  ", "Café 東京"] * 3


@pytest.fixture(scope="module")
def llama2_model(corpus, tmp_path_factory):
    """(directory, path) of a Llama-2-style tokenizer.model with Llama 2's tokenizer config."""
    directory = tmp_path_factory.mktemp("llama2_tokenizer")
    path = directory / "tokenizer.model"
    path.write_bytes(
        _train(
            corpus, vocab_size=VOCAB, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True
        )
    )
    (directory / "tokenizer_config.json").write_text(json.dumps(LLAMA2_CONFIG))
    return str(directory), str(path)


@pytest.fixture(scope="module")
def hf_tokenizer(llama2_model):
    """transformers 5's tokenizer for that directory; as ptjax, reading no specials from text."""
    hf = transformers.AutoTokenizer.from_pretrained(llama2_model[0], split_special_tokens=True)
    assert type(hf).__name__ == "LlamaTokenizer"
    return hf


def _published_json(hf_tokenizer) -> dict:
    """hf_tokenizer's tokenizer.json in the form Llama 2 publishes it (meta-llama/Llama-2-7b-hf,
    converted by transformers 4): the dummy prefix '\u2581' prepended to every text by a
    normalizer, as sentencepiece does, no pre-tokenizer, and an unk token in the model."""
    description = json.loads(hf_tokenizer.backend_tokenizer.to_str())
    description["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        ],
    }
    description["pre_tokenizer"] = None
    description["model"]["unk_token"] = "<unk>"
    return description


def _copy(model_path: str, directory, config: dict | None) -> Tokenizer:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "tokenizer.model")
    shutil.copyfile(model_path, path)
    if config is not None:
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump(config, f)
    return Tokenizer(path)


def test_special_ids_come_from_the_model_and_pad_is_unk(llama2_model, hf_tokenizer):
    tok = load_tokenizer(llama2_model[1])
    assert isinstance(tok, Tokenizer) and tok.vocab_size == VOCAB == len(hf_tokenizer)
    assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id) == (0, 2, 0, 1)
    assert (hf_tokenizer.unk_token_id, hf_tokenizer.bos_token_id) == (0, 1)
    assert hf_tokenizer.eos_token_id == 2 and hf_tokenizer.pad_token_id is None
    assert [tok.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    # Byte fallback: unk, and so pad, is never emitted.
    assert all(tok.pad_id not in tok.encode(text) for text in TEXTS)


def test_ids_equal_transformers_and_decode_round_trips(llama2_model, hf_tokenizer):
    tok = Tokenizer(llama2_model[1])
    sp = spm.SentencePieceProcessor(model_file=llama2_model[1])
    want = [hf_tokenizer.encode(text, add_special_tokens=False) for text in TEXTS]
    assert [tok.encode(text) for text in TEXTS] == want
    assert tok.encode_batch(TEXTS) == want
    assert tok.encode_batch([t.encode("utf-8") for t in TEXTS]) == want
    for text, ids in zip(TEXTS, want, strict=True):
        assert tok.decode(ids) == hf_tokenizer.decode(ids), text
        assert tok.encode_with_offsets(text)[0] == ids, text
        spaced = text[:1] in (" ", "\u2581")
        # transformers' Metaspace adds the dummy prefix only before a text that does not start
        # with whitespace, and its decoder strips one leading space: such a text loses it.
        shown = text.replace("\u2581", " ")  # Sentencepiece's whitespace, as both decode it.
        assert tok.decode(ids) == (shown[1:] if spaced else shown), text
        assert (sp.encode(text) == ids) == (not spaced), text  # The one difference.
    assert sp.encode(" hi") == [tok.piece_to_id("\u2581"), *tok.encode(" hi")]


def test_without_a_llama_config_it_encodes_as_sentencepiece(llama2_model, tmp_path):
    sp = spm.SentencePieceProcessor(model_file=llama2_model[1])
    plain = _copy(llama2_model[1], tmp_path / "plain", None)
    assert (plain.pad_id, plain.eos_id, plain.unk_id, plain.bos_id) == (0, 2, 0, 1)
    assert [plain.encode(text) for text in TEXTS] == [sp.encode(text) for text in TEXTS]
    shown = [text.replace("\u2581", " ") for text in TEXTS]
    assert [plain.decode(plain.encode(text)) for text in TEXTS] == shown
    # add_prefix_space: false: no dummy prefix at all, and none stripped when decoding.
    config = {**LLAMA2_CONFIG, "add_prefix_space": False}
    bare = _copy(llama2_model[1], tmp_path / "bare", config)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "bare"))
    for text in TEXTS[:6]:
        ids = hf.encode(text, add_special_tokens=False)
        assert bare.encode(text) == ids and bare.decode(ids) == hf.decode(ids) == text, text


def test_pad_token_from_the_config_and_models_ptjax_cannot_pad(
    llama2_model, corpus, tmp_path, caplog
):
    named = _copy(llama2_model[1], tmp_path / "named", {"pad_token": "<s>"})
    assert (named.pad_id, named.eos_id) == (1, 2)
    with caplog.at_level(logging.WARNING):
        eos = _copy(llama2_model[1], tmp_path / "eos", {"pad_token": {"content": "</s>"}})
    assert eos.pad_id == 0 and "names the eos '</s>' as pad_token" in caplog.text
    with pytest.raises(ValueError, match=r"pad_token='<pad>', which is not a piece"):
        _copy(llama2_model[1], tmp_path / "missing", {"pad_token": "<pad>"})

    ids = dict(vocab_size=80, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=False)
    (tmp_path / "no_bytes").mkdir()
    (tmp_path / "no_bytes" / "spm.model").write_bytes(_train(corpus, **ids))
    with pytest.raises(ValueError, match="no pad piece and no byte fallback.*'pad_token' in"):
        Tokenizer(str(tmp_path / "no_bytes" / "spm.model"))
    ids = {**ids, "eos_id": -1}
    (tmp_path / "no_eos.model").write_bytes(_train(corpus, **ids))
    with pytest.raises(ValueError, match="has no eos piece"):
        Tokenizer(str(tmp_path / "no_eos.model"))
    # T5's layout (pad 0, eos 1, unk 2, no bos) keeps its ids.
    (tmp_path / "t5.model").write_bytes(
        _train(corpus, vocab_size=80, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    )
    t5 = Tokenizer(str(tmp_path / "t5.model"))
    assert (t5.pad_id, t5.eos_id, t5.unk_id, t5.bos_id) == (0, 1, 2, -1)


def test_a_llama2_tokenizer_json_gives_transformers_ids_and_pads_with_unk(
    llama2_model, hf_tokenizer, tmp_path
):
    """With Llama 2's tokenizer_config.json (pad_token null) HFTokenizer pads with unk and gives
    transformers' ids, from the tokenizer.json transformers 5 saves and from the one Llama 2
    publishes, whose normalizer transformers ignores too; without it, the file as it is."""
    from ptjax.interop.hf_tokenizers import HFTokenizer

    want = [hf_tokenizer.encode(text, add_special_tokens=False) for text in TEXTS]
    saved, published = tmp_path / "saved", tmp_path / "published"
    hf_tokenizer.save_pretrained(str(saved))  # tokenizer.json, tokenizer_config.json.
    assert json.loads((saved / "tokenizer_config.json").read_text())["pad_token"] is None
    published.mkdir()
    (published / "tokenizer.json").write_text(json.dumps(_published_json(hf_tokenizer)))
    (published / "tokenizer_config.json").write_text(json.dumps(LLAMA2_CONFIG))
    for directory in (saved, published):
        tok = HFTokenizer(str(directory / "tokenizer.json"))
        assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id) == (0, 2, 0, 1), directory
        assert tok.vocab_size == VOCAB
        assert [tok.encode(text) for text in TEXTS] == tok.encode_batch(TEXTS) == want
        for text, ids in zip(TEXTS, want, strict=True):
            assert tok.encode_with_offsets(text)[0] == ids, text
            assert tok.decode(ids) == hf_tokenizer.decode(ids), text
    hf = transformers.AutoTokenizer.from_pretrained(str(published), split_special_tokens=True)
    assert [hf.encode(text, add_special_tokens=False) for text in TEXTS] == want

    # Without a Llama tokenizer_class (nor a config), both read the published file as it is,
    # which is sentencepiece's rule: texts that start with whitespace get an extra '\u2581'.
    (published / "tokenizer_config.json").unlink()
    plain = HFTokenizer(str(published / "tokenizer.json"))  # Specials by their usual names.
    hf = transformers.AutoTokenizer.from_pretrained(str(published), split_special_tokens=True)
    assert type(hf).__name__ != "LlamaTokenizer"
    sp = spm.SentencePieceProcessor(model_file=llama2_model[1])
    got = [plain.encode(text) for text in TEXTS]
    assert got == [sp.encode(text) for text in TEXTS]
    assert got == [hf.encode(text, add_special_tokens=False) for text in TEXTS]
    assert [text for text, ids, w in zip(TEXTS, got, want, strict=True) if ids != w] == [
        text for text in TEXTS if text[:1] in (" ", "\u2581")
    ]
    assert (plain.pad_id, plain.eos_id, plain.unk_id, plain.bos_id) == (0, 2, 0, 1)
    # Without byte fallback the model can emit unk: no pad id then.
    description = _published_json(hf_tokenizer)
    description["model"]["byte_fallback"] = False
    (published / "tokenizer.json").write_text(json.dumps(description))
    with pytest.raises(ValueError, match="has no pad token"):
        HFTokenizer(str(published / "tokenizer.json"))

    # A byte-level BPE (Llama 3 style) that names LlamaTokenizerFast is read as it is, as
    # transformers reads it; it pads with a byte that UTF-8 never has.
    bpe = pytest.importorskip("tokenizers").ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS * 3, vocab_size=300, special_tokens=["<s>", "</s>"])
    byte_level = tmp_path / "byte_level"
    byte_level.mkdir()
    bpe.save(str(byte_level / "tokenizer.json"))
    config = {"tokenizer_class": "LlamaTokenizerFast", "pad_token": None, "eos_token": "</s>"}
    (byte_level / "tokenizer_config.json").write_text(json.dumps(config))
    tok = HFTokenizer(str(byte_level / "tokenizer.json"))
    hf = transformers.AutoTokenizer.from_pretrained(str(byte_level), split_special_tokens=True)
    assert [tok.encode(text) for text in TEXTS] == [
        hf.encode(text, add_special_tokens=False) for text in TEXTS
    ]
    assert tok.id_to_piece(tok.pad_id) == "\xff"


def _llama_dir(tmp_path, llama2_model) -> str:
    """An HF Llama directory: a tiny random LlamaForCausalLM and only the tokenizer.model."""
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    hf_dir = str(tmp_path / "hf")
    transformers.LlamaForCausalLM(config).save_pretrained(hf_dir)
    shutil.copyfile(llama2_model[1], os.path.join(hf_dir, "tokenizer.model"))
    return hf_dir


@pytest.fixture(scope="module")
def llama_import(llama2_model, tmp_path_factory):
    """(hf_dir, workdir): an HF Llama directory with only a tokenizer.model, imported."""
    from ptjax.interop import import_hf

    tmp_path = tmp_path_factory.mktemp("llama_import")
    hf_dir = _llama_dir(tmp_path, llama2_model)
    workdir = str(tmp_path / "run")
    import_hf(hf_dir, workdir)
    return hf_dir, workdir


def test_a_llama_directory_with_only_a_tokenizer_model_imports_it(
    llama2_model, hf_tokenizer, llama_import, tmp_path
):
    from ptjax.interop import import_hf
    from ptjax.interop.hf_tokenizers import HFTokenizer
    from ptjax.run import Run

    hf_dir, workdir = llama_import
    assert not os.path.exists(os.path.join(hf_dir, "tokenizer.json"))
    directory = os.path.join(workdir, "tokenizer")
    assert sorted(os.listdir(directory)) == ["spm.model", "tokenizer_config.json"]
    with open(os.path.join(directory, "spm.model"), "rb") as a, open(llama2_model[1], "rb") as b:
        assert a.read() == b.read()
    with open(os.path.join(directory, "tokenizer_config.json")) as f:
        assert json.load(f) == {"tokenizer_class": "LlamaTokenizer"}  # What HF assumes.
    run = Run.open(workdir)
    tok = run.tokenizer
    assert tokenizer_file(directory) == tok.path == os.path.join(directory, "spm.model")
    assert (run.config.model.family, run.config.model.vocab_size) == ("llama", VOCAB)
    assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id, tok.vocab_size) == (0, 2, 0, 1, VOCAB)
    assert [tok.encode(text) for text in TEXTS] == [
        hf_tokenizer.encode(text, add_special_tokens=False) for text in TEXTS
    ]
    # Documents and prompts start with <s> as transformers adds it, and end with </s>.
    assert tok.bos_documents
    prompt = run.generator().encode_prompts(["In the beginning"])[0]
    assert prompt == hf_tokenizer("In the beginning").input_ids and prompt[0] == 1

    # As Llama 2 ships: a tokenizer.json and a tokenizer_config.json too. Both are copied and
    # the tokenizer.json is read, as transformers reads it first; same ids, same pad.
    both = str(tmp_path / "both")
    shutil.copytree(hf_dir, both)
    with open(os.path.join(both, "tokenizer_config.json"), "w") as f:
        json.dump(LLAMA2_CONFIG, f)
    with open(os.path.join(both, "tokenizer.json"), "w") as f:
        json.dump(_published_json(hf_tokenizer), f)
    workdir = str(tmp_path / "run_json")
    import_hf(both, workdir)
    directory = os.path.join(workdir, "tokenizer")
    assert sorted(os.listdir(directory)) == ["tokenizer.json", "tokenizer_config.json"]
    tok = Run.open(workdir).tokenizer
    assert isinstance(tok, HFTokenizer)
    assert tok.path == os.path.join(directory, "tokenizer.json")
    assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id) == (0, 2, 0, 1)
    assert [tok.encode(text) for text in TEXTS] == [
        hf_tokenizer.encode(text, add_special_tokens=False) for text in TEXTS
    ]
    assert tok.bos_documents  # The config's add_bos_token (and the template's <s>).


def test_a_llama_run_exports_its_tokenizer_model_for_llama_tokenizer(llama_import, tmp_path):
    from ptjax.interop import convert
    from ptjax.run import Run

    hf_dir, workdir = llama_import
    out_dir = str(tmp_path / "export")
    assert convert.export_hf(workdir, out_dir) == "LlamaForCausalLM"
    assert "spiece.model" not in os.listdir(out_dir)
    exported, source = (os.path.join(d, "tokenizer.model") for d in (out_dir, hf_dir))
    with open(exported, "rb") as a, open(source, "rb") as b:
        assert a.read() == b.read()
    with open(os.path.join(out_dir, "tokenizer_config.json")) as f:
        assert json.load(f) == {  # No pad_token: the model has no pad piece.
            "tokenizer_class": "LlamaTokenizer",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "add_bos_token": True,
            "add_eos_token": False,
        }
    hf = transformers.AutoTokenizer.from_pretrained(out_dir, split_special_tokens=True)
    assert type(hf).__name__ == "LlamaTokenizer" and hf.pad_token_id is None
    ours = Run.open(workdir).tokenizer
    want = [ours.encode(text) for text in TEXTS]
    assert [hf.encode(text, add_special_tokens=False) for text in TEXTS] == want
    assert [hf.encode(text) for text in TEXTS] == [[ours.bos_id, *ids] for ids in want]
    # Read back by ptjax from the export: the same tokenizer.
    assert [Tokenizer(os.path.join(out_dir, "tokenizer.model")).encode(t) for t in TEXTS] == want


def test_a_llama_tokenizer_config_of_its_own_is_exported_as_it_is(
    llama2_model, hf_tokenizer, tmp_path, caplog
):
    from ptjax.interop import convert

    tok = Tokenizer(llama2_model[1])  # Llama 2's tokenizer_config.json next to it.
    with caplog.at_level(logging.WARNING):
        written = convert._export_tokenizer(tok, "llama", 0, str(tmp_path))
    assert sorted(written) == ["tokenizer.model", "tokenizer_config.json"] and not caplog.text
    assert json.loads((tmp_path / "tokenizer_config.json").read_text()) == LLAMA2_CONFIG
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path), split_special_tokens=True)
    assert [hf.encode(text) for text in TEXTS] == [hf_tokenizer.encode(text) for text in TEXTS]


def test_a_ptjax_trained_tokenizer_exports_for_llama_tokenizer_with_a_warning(
    corpus, tmp_path, caplog
):
    """A llama run on ptjax's own unigram model (pad 0, eos 1, unk 2, bos 3): its pad is
    written too, and a warning says LlamaTokenizer's ids may differ from ptjax's."""
    from ptjax.data.tokenizer import train_tokenizer
    from ptjax.interop import convert

    tok = train_tokenizer(corpus, str(tmp_path / "tok" / "spm.model"), vocab_size=400)
    out_dir = tmp_path / "export"
    out_dir.mkdir()
    with caplog.at_level(logging.WARNING):
        written = convert._export_tokenizer(tok, "llama", 0, str(out_dir))
    assert sorted(written) == ["tokenizer.model", "tokenizer_config.json"]
    assert "sentencepiece does" in caplog.text and "not a BPE model" in caplog.text
    config = json.loads((out_dir / "tokenizer_config.json").read_text())
    assert config == {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "add_bos_token": True,
        "add_eos_token": False,
    }
    hf = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    assert (hf.pad_token_id, hf.eos_token_id, hf.unk_token_id, hf.bos_token_id) == (0, 1, 2, 3)
