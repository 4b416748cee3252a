"""A tokenizer.json's own padding, truncation and post-processor are switched off at load.

Each tokenizer.json here is built offline with one such setting; HFTokenizer must give the ids
and character offsets of the same tokenizer.json without it, cut nothing, name the setting in
`switched_off`, leave the file as it was, and keep QA answer offsets on the exact context text.
"""

import json
import logging
import os

import pytest

from ptjax.data import qa
from ptjax.interop import hf_tokenizers
from ptjax.interop.hf_tokenizers import HFTokenizer

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors  # noqa: E402

TEXTS = [
    "Hello world, the quick brown fox.",
    "Zürich is the largest city in Switzerland, with about 420,000 inhabitants.",
    "Café naïve résumé 東京 emoji 😀!",
    "  spaces   and\ttabs\n\nnew lines  ",
    "",
]
# Longer than every truncation length below (12 tokens): nothing of it may be cut.
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 6)
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world this is a test of the tokenizer",
    "zurich is the largest city in switzerland with about inhabitants",
    "cafe naive resume 東京 北京 where is the treasure hidden near the old mill",
] * 10
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MAX_LENGTH = 12


def _wordpiece() -> "tokenizers.Tokenizer":
    """An uncased BERT WordPiece tokenizer over CORPUS's words, every letter and digit."""
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    words = set(" ".join(CORPUS).split()) | set(chars) | set(".,;!?'()")
    tokens = BERT_SPECIALS + sorted(words | {"##" + c for c in chars})
    tok = tokenizers.Tokenizer(
        models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]")
    )
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(BERT_SPECIALS)
    return tok


def _byte_level_bpe() -> "tokenizers.Tokenizer":
    """A GPT-2 style byte-level BPE (all 256 byte tokens) with RoBERTa's special tokens."""
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        CORPUS, vocab_size=320, min_frequency=2, special_tokens=["<s>", "</s>", "<|endoftext|>"]
    )
    tok = tokenizers.Tokenizer.from_str(bpe.to_str())
    tok.post_processor = None
    return tok


def _with_setting(tok: "tokenizers.Tokenizer", setting: str) -> "tokenizers.Tokenizer":
    """A copy of `tok` with one setting of a published tokenizer.json switched on."""
    tok = tokenizers.Tokenizer.from_str(tok.to_str())
    cls, sep = ("[CLS]", "[SEP]") if tok.token_to_id("[CLS]") is not None else ("<s>", "</s>")
    cls_sep = (cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))
    if setting in ("fixed_padding", "qa"):
        tok.enable_padding(length=128, pad_id=0, pad_token="[PAD]")
    if setting == "batch_longest_padding":
        tok.enable_padding(pad_id=0, pad_token="[PAD]")
    if setting in ("truncation", "qa"):
        tok.enable_truncation(max_length=MAX_LENGTH)
    if setting in ("template", "qa"):
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1", special_tokens=cls_sep
        )
    if setting == "bert_processing":
        tok.post_processor = processors.BertProcessing(cls_sep[1], cls_sep[0])
    if setting == "roberta_processing":
        tok.post_processor = processors.RobertaProcessing(
            cls_sep[1], cls_sep[0], trim_offsets=True, add_prefix_space=False
        )
    if setting == "byte_level_trim":
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    return tok


def _save(tok: "tokenizers.Tokenizer", directory) -> str:
    os.makedirs(directory)
    path = os.path.join(directory, "tokenizer.json")
    tok.save(path)
    return path


# setting -> (base tokenizer, the line `switched_off` must hold).
SETTINGS = {
    "fixed_padding": (_wordpiece, ("padding (Fixed 128, pad_id 0)",)),
    "batch_longest_padding": (_wordpiece, ("padding (BatchLongest, pad_id 0)",)),
    "truncation": (_wordpiece, (f"truncation (max_length {MAX_LENGTH}, LongestFirst)",)),
    "template": (
        _wordpiece,
        ("post-processor TemplateProcessing (its special tokens are added by ptjax's pipelines)",),
    ),
    "bert_processing": (
        _wordpiece,
        ("post-processor BertProcessing (its special tokens are added by ptjax's pipelines)",),
    ),
    "roberta_processing": (
        _byte_level_bpe,
        (
            "post-processor RobertaProcessing (its special tokens are added by ptjax's "
            "pipelines; trim_offsets: encode_with_offsets trims spans itself)",
        ),
    ),
    "byte_level_trim": (
        _byte_level_bpe,
        ("post-processor ByteLevel (trim_offsets: encode_with_offsets trims spans itself)",),
    ),
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_settings_are_switched_off_and_named(setting, tmp_path, caplog):
    base, lines = SETTINGS[setting]
    plain_tok = base()
    plain = HFTokenizer(_save(plain_tok, tmp_path / "plain"))
    path = _save(_with_setting(plain_tok, setting), tmp_path / setting)
    with open(path, "rb") as f:
        on_disk = f.read()
    with open(tmp_path / "plain" / "tokenizer.json", "rb") as f:
        assert json.loads(on_disk) != json.loads(f.read())  # The setting is in the file.
    with caplog.at_level(logging.INFO):
        ours = HFTokenizer(path)

    assert ours.switched_off == lines and plain.switched_off == ()
    logged = [r.getMessage() for r in caplog.records if "switched off" in r.getMessage()]
    assert len(logged) == 1 and lines[0] in logged[0] and path in logged[0]
    raw = tokenizers.Tokenizer.from_file(os.path.join(tmp_path, "plain", "tokenizer.json"))
    for text in [*TEXTS, LONG]:
        want = raw.encode(text, add_special_tokens=False)
        assert ours.encode(text) == plain.encode(text) == want.ids, text
        assert ours.encode_with_offsets(text) == plain.encode_with_offsets(text), text
    assert len(ours.encode(LONG)) > MAX_LENGTH  # Nothing is cut.
    assert ours.encode_batch([*TEXTS, LONG]) == [plain.encode(t) for t in [*TEXTS, LONG]]
    assert (ours.pad_id, ours.eos_id, ours.bos_id, ours.unk_id, ours.vocab_size) == (
        plain.pad_id,
        plain.eos_id,
        plain.bos_id,
        plain.unk_id,
        plain.vocab_size,
    )
    ids = ours.encode(TEXTS[0])
    assert ours.decode(ids) == plain.decode(ids)

    with open(path, "rb") as f:
        assert f.read() == on_disk  # The file is left as it was ...
    out = tmp_path / "export"
    out.mkdir()
    assert "tokenizer.json" in hf_tokenizers.copy_files(os.path.dirname(path), str(out))
    assert (out / "tokenizer.json").read_bytes() == on_disk  # ... and exported as it was.


def test_all_settings_together_are_named_in_order(tmp_path):
    tok = _with_setting(_wordpiece(), "qa")
    ours = HFTokenizer(_save(tok, tmp_path / "qa"))
    assert ours.switched_off == (
        "padding (Fixed 128, pad_id 0)",
        f"truncation (max_length {MAX_LENGTH}, LongestFirst)",
        "post-processor TemplateProcessing (its special tokens are added by ptjax's pipelines)",
    )


def test_qa_answer_offsets_slice_the_exact_context(tmp_path):
    """Fixed padding + truncation + a [CLS]/[SEP] template, as a sentence-transformers export:
    windows hold the whole context, unpadded, and the answer's offsets give its exact text."""
    plain = HFTokenizer(_save(_wordpiece(), tmp_path / "plain"))
    ours = HFTokenizer(_save(_with_setting(_wordpiece(), "qa"), tmp_path / "qa"))
    context = (
        "The quick brown fox jumps over the lazy dog. Where is the treasure hidden? The "
        "treasure is hidden near the old mill in Zürich, with about 420,000 inhabitants. "
        "Hello world, this is a test of the tokenizer: café naïve résumé."
    )
    examples = [
        qa.QAExample(str(i), question, context, (answer,), (context.index(answer),))
        for i, (question, answer) in enumerate(
            [
                ("Where is the treasure hidden?", "near the old mill in Zürich"),
                ("How many inhabitants?", "420,000"),
                ("What is the tokenizer test?", "café naïve résumé"),
            ]
        )
    ]
    context_ids = ours.encode(context)
    assert context_ids == plain.encode(context) and len(context_ids) > 3 * MAX_LENGTH
    seq_len, max_query_len, stride = 32, 8, 8
    features = list(
        qa.make_features(
            examples, ours, seq_len=seq_len, max_query_len=max_query_len, doc_stride=stride
        )
    )
    want = list(
        qa.make_features(
            examples, plain, seq_len=seq_len, max_query_len=max_query_len, doc_stride=stride
        )
    )
    assert len(features) == len(want) > len(examples)  # Several windows per example.
    for got, expected in zip(features, want, strict=True):
        assert got.input_ids.tolist() == expected.input_ids.tolist()
        assert got.offsets.tolist() == expected.offsets.tolist()
        assert ours.pad_id not in got.input_ids.tolist()  # No padding inside rows.
    for index, example in enumerate(examples):
        holding = [f for f in features if f.example_index == index and f.start_position]
        assert holding, example.question
        for f in holding:
            start, end = f.offsets[f.start_position, 0], f.offsets[f.end_position, 1]
            assert context[start:end] == example.answers[0]
        # The windows together hold every context token, in order.
        windows = [f for f in features if f.example_index == index]
        covered = []
        for f in windows:
            window = f.input_ids[f.context_offset : -1].tolist()
            covered[f.window_start :] = window
        assert covered == context_ids
