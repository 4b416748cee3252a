"""Labelled-text builders: the bundled SpamAssassin splits and local CSV/JSONL files."""

import collections
import json

import pytest

from ptjax.data.builders import labeled as cc


@pytest.fixture(scope="module")
def spam(tmp_path_factory):
    builder = cc.SpamAssassin(data_dir=str(tmp_path_factory.mktemp("tfds")))
    builder.download_and_prepare()
    splits = {}
    for split in ("train", "validation", "test"):
        splits[split] = [
            (ex["text"].decode("utf-8"), int(ex["label"]))
            for ex in builder.as_dataset(split=split).as_numpy_iterator()
        ]
    return builder, splits


def test_spam_splits_are_disjoint_and_add_up(spam):
    builder, splits = spam
    assert builder.name == "ptjax_spam"
    assert builder.info.features["label"].names == ["ham", "spam"]
    sizes = {split: len(examples) for split, examples in splits.items()}
    assert sizes == {"train": 4021, "validation": 519, "test": 528}  # As documented.
    assert sum(sizes.values()) == 5068
    texts = {split: {text for text, _ in examples} for split, examples in splits.items()}
    assert not texts["train"] & texts["validation"]
    assert not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]
    labels = collections.Counter(label for ex in splits.values() for _, label in ex)
    assert labels == {0: 4028, 1: 1040}
    for split, examples in splits.items():  # Each split's text hashes to that split.
        assert all(cc.spam_split(text) == split for text, _ in examples[:50])


def test_spam_text_is_subject_blank_line_body():
    records = cc.spam_records()
    record = next(r for r in records if r["subject"].strip())
    assert cc.spam_text(record) == record["subject"].strip() + "\n\n" + record["text"]
    assert cc.spam_text({"subject": " ", "text": "body"}) == "body"


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def _examples(builder, split="train"):
    return list(builder.as_dataset(split=split).as_numpy_iterator())


def test_labeled_files_csv_and_jsonl(tmp_path):
    train = _write(
        tmp_path / "train.csv",
        'text,text_b,label,extra\n"a, quoted\nline",b,yes,x\nc,d,no,y\ne,f,yes,z\n',
    )
    rows = [
        {"text": "g", "text_b": "h", "label": "no"},
        {"text": "i", "text_b": "", "label": "yes"},
    ]
    valid = _write(tmp_path / "valid.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    builder = cc.LabeledTextFiles(
        train_files=train, validation_files=valid, data_dir=str(tmp_path / "tfds")
    )
    builder.download_and_prepare()
    assert builder.info.features["label"].names == ["no", "yes"]  # Sorted from the data.
    assert set(builder.info.splits) == {"train", "validation"}
    got = sorted((ex["text"], ex["text_b"], ex["label"]) for ex in _examples(builder))
    assert got == [(b"a, quoted\nline", b"b", 1), (b"c", b"d", 0), (b"e", b"f", 1)]
    assert len(_examples(builder, "validation")) == 2

    numbers = _write(
        tmp_path / "numbers.jsonl", '{"text": "x", "label": 10}\n{"text": "y", "label": 2}'
    )
    single = cc.LabeledTextFiles(train_files=numbers, data_dir=str(tmp_path / "tfds"))
    assert single.info.features["label"].names == ["2", "10"]
    assert "text_b" not in single.info.features
    declared = cc.LabeledTextFiles(
        train_files=numbers, label_names=["2", "10", "7"], data_dir=str(tmp_path / "tfds")
    )
    assert declared.info.features["label"].num_classes == 3


def _jsonl(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


OK = {"text": "t", "label": "x"}


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("a.csv", "text,label\nfine,x\nno label\n", r"a\.csv:3: missing field 'label'"),
        ("b.csv", "body,label\nhi,x\n", r"b\.csv:2: missing field 'text'"),
        ("c.jsonl", _jsonl(OK, "", {"label": "x"}), r"c\.jsonl:3: missing field 'text'"),
        ("d.jsonl", _jsonl(OK, '{"text": "t", "label'), r"d\.jsonl:2: invalid JSON"),
        ("e.jsonl", _jsonl({"text": ["t"], "label": "x"}), r"e\.jsonl:1: field 'text' is list"),
        ("f.jsonl", _jsonl({**OK, "text_b": "u"}, OK), r"f\.jsonl:2: missing field 'text_b'"),
        ("g.jsonl", _jsonl({"text": "t", "label": "maybe"}), r"g\.jsonl:1: label 'maybe' is not"),
        ("h.txt", "text,label\n", r"unknown labelled-file type '\.txt'"),
        ("i.csv", "", r"i\.csv:1: empty CSV"),
    ],
)
def test_labeled_files_errors_name_file_and_line(tmp_path, name, content, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(ValueError, match=message):
        cc.LabeledTextFiles(
            train_files=path, label_names=["no", "x"], data_dir=str(tmp_path / "tfds")
        )


def test_labeled_files_bad_encoding(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\nok,x\ncaf\u00e9,x\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.csv:3: invalid UTF-8 byte b'\\xe9'"):
        cc.LabeledTextFiles(train_files=str(path), data_dir=str(tmp_path / "tfds"))
