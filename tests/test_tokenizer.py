"""Tokenizer: round trips, special ids, training errors, file handling, the training script."""

from __future__ import annotations

import importlib.util
import os
import pathlib

import pytest
from absl import flags

from ptjax.data.builders import text as text_builders
from ptjax.data.tokenizer import Tokenizer, check_vocab, train_tokenizer

VOCAB = 400
TEXTS = [
    "Hello, world!",
    "  two leading spaces and  double  spaces ",
    "Accents: café, naïve, Ångström, señor, Ærø, ﬁ ligature",
    "Line one\nline two\ttabbed",
    "Unseen scripts: 漢字かな 🙂 Ελληνικά русский",
    "",
]


@pytest.fixture(scope="session")
def verses() -> list[str]:
    return text_builders.bible_verses()[:500]


@pytest.fixture(scope="session")
def tok(tmp_path_factory, verses) -> Tokenizer:
    path = tmp_path_factory.mktemp("tokenizer") / "tiny.model"
    return train_tokenizer(verses, str(path), vocab_size=VOCAB)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(i > tok.bos_id for i in ids), "byte fallback: no unk/special ids for any text"


def test_special_ids_and_size(tok):
    assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id) == (0, 1, 2, 3)
    assert tok.vocab_size == VOCAB
    assert tok.decode([0, *tok.encode("In the beginning"), 0, 0]) == "In the beginning"


def test_encode_batch_matches_encode(tok, verses):
    texts = verses[:50] + TEXTS
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch([t.encode() for t in texts]) == tok.encode_batch(texts)


def test_check_vocab(tok):
    check_vocab(tok, VOCAB)
    with pytest.raises(ValueError, match=rf"512.*{VOCAB}.*tiny\.model"):
        check_vocab(tok, 512)


def test_missing_and_corrupt_files(tmp_path):
    missing = tmp_path / "nope.model"
    with pytest.raises(FileNotFoundError, match="nope.model"):
        Tokenizer(str(missing))
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"this is not a sentencepiece model")
    with pytest.raises(ValueError, match="corrupt.model"):
        Tokenizer(str(corrupt))


def test_refuses_to_overwrite(tmp_path, verses):
    path = tmp_path / "exists.model"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="exists.model"):
        train_tokenizer(verses, str(path), vocab_size=VOCAB)
    assert path.read_bytes() == b"keep me"
    assert os.listdir(tmp_path) == ["exists.model"]  # No temporary file left behind.


def test_deterministic_and_bpe(tmp_path, tok, verses):
    again = train_tokenizer(verses, str(tmp_path / "again.model"), vocab_size=VOCAB)
    assert pathlib.Path(again.path).read_bytes() == pathlib.Path(tok.path).read_bytes()
    bpe = train_tokenizer(verses, str(tmp_path / "bpe.model"), vocab_size=VOCAB, model_type="bpe")
    assert bpe.decode(bpe.encode(TEXTS[2])) == TEXTS[2]


def test_training_errors(tmp_path, verses):
    with pytest.raises(ValueError, match="No non-empty text"):
        train_tokenizer([], str(tmp_path / "a.model"), vocab_size=VOCAB)
    with pytest.raises(ValueError, match="No non-empty text"):
        train_tokenizer(["", "  \n"], str(tmp_path / "b.model"), vocab_size=VOCAB)
    with pytest.raises(ValueError, match="vocab_size=5000"):
        train_tokenizer(verses[:3], str(tmp_path / "c.model"), vocab_size=5000)
    with pytest.raises(ValueError, match="model_type"):
        train_tokenizer(verses, str(tmp_path / "d.model"), vocab_size=VOCAB, model_type="wordpiece")
    assert not list(tmp_path.iterdir())


def test_script(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(text_builders.bible_verses()[1000:1400]), encoding="utf-8")
    script = pathlib.Path(__file__).parents[1] / "scripts" / "train_tokenizer.py"
    spec = importlib.util.spec_from_file_location("train_tokenizer_script", script)
    module = importlib.util.module_from_spec(spec)
    flag_values = flags.FLAGS
    before = set(flag_values)
    spec.loader.exec_module(module)
    output = tmp_path / "script.model"
    try:
        flag_values(
            [
                "train_tokenizer",
                "--dataset=text_files",
                f"--files={corpus}",
                f"--data_dir={tmp_path / 'tfds'}",
                f"--output={output}",
                f"--vocab_size={VOCAB}",
            ],
            known_only=True,
        )
        module.main(["train_tokenizer"])
    finally:
        for name in set(flag_values) - before:  # Leave absl's global flags as we found them.
            delattr(flag_values, name)
    assert Tokenizer(str(output)).vocab_size == VOCAB
    assert f"vocab_size={VOCAB}" in capsys.readouterr().out
