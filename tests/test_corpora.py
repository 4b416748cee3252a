"""Corpora: the bundled Bible and local text-file builders, sharding, and offline-only loading."""

from __future__ import annotations

import os

import pytest

from ptjax import config as config_lib
from ptjax.data import corpora
from ptjax.data.builders import text as text_builders


def dataset_config(**overrides):
    dataset = config_lib.base_config().dataset
    dataset.update(overrides)
    return dataset


def texts(dataset, split, data_dir, shard=(0, 1)) -> list[str]:
    ds = corpora.load_texts(dataset, split, data_dir=data_dir, shard=shard)
    return [t.decode("utf-8") for t in ds.as_numpy_iterator()]


@pytest.fixture(scope="session")
def bible_dir(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    corpora.get_builder(dataset_config(), data_dir=data_dir)  # Prepares offline.
    return data_dir


def test_bible_splits(bible_dir):
    passages = text_builders.bible_passages()
    assert len(text_builders.bible_verses()) == 37_457
    assert len(passages) == 4_683  # ceil(37457 / 8)
    train = texts(dataset_config(), "train", bible_dir)
    validation = texts(dataset_config(), "validation", bible_dir)
    assert (len(train), len(validation)) == (4_449, 234)
    assert sorted(validation) == sorted(p for i, p in enumerate(passages) if i % 20 == 19)
    assert sorted(train + validation) == sorted(passages)
    assert not set(train) & set(validation)
    assert os.path.isdir(os.path.join(bible_dir, "ptjax_bible", "1.0.0"))


@pytest.mark.parametrize("count", [2, 3])
def test_process_shards_are_disjoint_and_cover(bible_dir, count):
    whole = texts(dataset_config(), "validation", bible_dir)
    shards = [texts(dataset_config(), "validation", bible_dir, (i, count)) for i in range(count)]
    assert sorted(sum(shards, [])) == sorted(whole)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_iterate_texts_and_bad_split(bible_dir):
    got = list(corpora.iterate_texts(dataset_config(), "train", data_dir=bible_dir, max_texts=5))
    assert len(got) == 5 and all(isinstance(t, str) and t for t in got)
    with pytest.raises(ValueError, match="no split 'test'"):
        corpora.load_texts(dataset_config(), "test", data_dir=bible_dir, shard=(0, 1))


def write(path, text: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return str(path)


def test_text_files_lines_with_holdout(tmp_path):
    a = write(tmp_path / "docs" / "a.txt", "".join(f"a{i}\n" for i in range(30)) + "\n  \n")
    b = write(tmp_path / "docs" / "b.txt", "b0\n\nb1\nb2")
    dataset = dataset_config(name="text_files", train_files=str(tmp_path / "docs" / "*.txt"))
    data_dir = str(tmp_path / "tfds")
    train = texts(dataset, "train", data_dir)
    validation = texts(dataset, "validation", data_dir)
    documents = [f"a{i}" for i in range(30)] + ["b0", "b1", "b2"]
    assert sorted(validation) == ["a19"]  # Document 19 of 33; every 20th is held out.
    assert sorted(train + validation) == sorted(documents)
    builder = corpora.get_builder(dataset, data_dir=data_dir)
    assert builder.info.metadata["empty_documents_skipped"] == {"train_files": 3}
    # Explicit eval files: all train documents train.
    dataset.train_files, dataset.eval_files = f"{a}, {b}", b
    assert sorted(texts(dataset, "train", data_dir)) == sorted(documents)
    assert sorted(texts(dataset, "validation", data_dir)) == ["b0", "b1", "b2"]


def test_text_files_per_file_and_small_corpus(tmp_path):
    for i in range(3):
        write(tmp_path / f"f{i}.txt", f"title {i}\n\nbody {i}\n")
    write(tmp_path / "empty.txt", "\n\n")
    dataset = dataset_config(
        name="text_files", train_files=str(tmp_path / "*.txt"), document_per="file"
    )
    data_dir = str(tmp_path / "tfds")
    # Under 20 documents: the last one is held out so validation is never empty.
    assert sorted(texts(dataset, "train", data_dir)) == ["title 0\n\nbody 0", "title 1\n\nbody 1"]
    assert texts(dataset, "validation", data_dir) == ["title 2\n\nbody 2"]


def test_text_files_changed_file_is_prepared_again(tmp_path):
    path = tmp_path / "c.txt"
    write(path, "one\ntwo\n")
    dataset = dataset_config(name="text_files", train_files=str(path))
    data_dir = str(tmp_path / "tfds")
    first = corpora.get_builder(dataset, data_dir=data_dir)
    write(path, "one\ntwo\nthree\n")
    second = corpora.get_builder(dataset, data_dir=data_dir)
    assert first.data_dir != second.data_dir
    assert sorted(texts(dataset, "train", data_dir) + texts(dataset, "validation", data_dir)) == [
        "one",
        "three",
        "two",
    ]


def test_text_files_errors(tmp_path):
    data_dir = str(tmp_path / "tfds")
    missing = str(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        corpora.get_builder(
            dataset_config(name="text_files", train_files=missing), data_dir=data_dir
        )
    nothing = str(tmp_path / "*.nothing")
    with pytest.raises(FileNotFoundError, match=r"\*\.nothing"):
        corpora.get_builder(
            dataset_config(name="text_files", train_files=nothing), data_dir=data_dir
        )
    empty = write(tmp_path / "empty.txt", "\n \n\n")
    with pytest.raises(ValueError, match="empty.txt.*no non-empty documents"):
        corpora.get_builder(dataset_config(name="text_files", train_files=empty), data_dir=data_dir)
    latin1 = write(tmp_path / "latin1.txt", "fine\nalso fine\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt:3: invalid UTF-8"):
        corpora.get_builder(
            dataset_config(name="text_files", train_files=latin1), data_dir=data_dir
        )
    dataset = dataset_config(name="text_files", train_files=latin1, document_per="file")
    with pytest.raises(ValueError, match="latin1.txt:3: invalid UTF-8"):
        corpora.get_builder(dataset, data_dir=data_dir)


def test_more_processes_than_documents(tmp_path):
    path = write(tmp_path / "two.txt", "first\nsecond\n")
    dataset = dataset_config(name="text_files", train_files=path)
    data_dir = str(tmp_path / "tfds")
    shards = [texts(dataset, "train", data_dir, (i, 3)) for i in range(3)]
    assert sorted(sum(shards, [])) == ["first"] and [] in shards


def test_catalogue_dataset_is_never_downloaded(tmp_path):
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(FileNotFoundError, match="tfds build lm1b"):
        corpora.load_texts(dataset_config(name="lm1b"), "train", data_dir=data_dir, shard=(0, 1))
    assert not os.path.exists(os.path.join(data_dir, "lm1b"))
    with pytest.raises(ValueError, match="not_a_dataset"):
        corpora.get_builder(dataset_config(name="not_a_dataset"), data_dir=data_dir)
