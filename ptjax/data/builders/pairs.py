"""Text-pair corpora as TFDS builders: the bundled English-Spanish Bible and a user's JSONL pairs.

Both prepare offline into `data_dir` on first use (`corpora.get_builder`). `ptjax_en_es` yields
`{'en', 'es', 'ref'}`; `seq2seq_files` yields `{'inputs', 'targets'}`. The seq2seq pipeline
(`ptjax.data.seq2seq_pipeline`) turns either into (inputs, targets) text pairs.
"""

from __future__ import annotations

import hashlib
import json
import lzma
from collections.abc import Iterator, Sequence
from typing import Any

import importlib_resources

from ptjax.data import files
from ptjax.data.tf_setup import import_tf

tf = import_tf()

import tensorflow_datasets as tfds  # noqa: E402  (after import_tf: TF must be set up first)

# Whole books held out, so no verse of a held-out book (nor a neighbour of one) is in train.
VALIDATION_BOOKS = ("Ruth", "Jonah", "Philemon")  # 85 + 47 + 25 = 157 verses.
TEST_BOOKS = ("Esther", "Obadiah", "Titus")  # 167 + 21 + 46 = 234 verses.
EN_ES_SPLITS = {"train": 30_686, "validation": 157, "test": 234}  # Of 31,077 verses.
SEQ2SEQ_FILES_SPLITS = {"train": "train_files", "validation": "eval_files", "test": "test_files"}


def en_es_records() -> list[dict[str, str]]:
    """The bundled verse-aligned rows {'ref', 'en', 'en_kjv', 'es'}, in book order."""
    resource = importlib_resources.files("ptjax.data") / "assets" / "bible_en_es.jsonl.xz"
    lines = lzma.decompress(resource.read_bytes()).decode("utf-8").split("\n")
    return [json.loads(line) for line in lines if line.strip()]


def book_of(ref: str) -> str:
    """'I Samuel 3:4' -> 'I Samuel'; 'Song of Solomon 1:1' -> 'Song of Solomon'."""
    return ref.rsplit(" ", 1)[0]


def en_es_split(ref: str) -> str:
    """'train', 'validation' or 'test' of a verse reference, by its book."""
    book = book_of(ref)
    if book in VALIDATION_BOOKS:
        return "validation"
    return "test" if book in TEST_BOOKS else "train"


class PtjaxEnEs(tfds.core.GeneratorBasedBuilder):
    """Bible verses in English (World English Bible) and Spanish (Reina-Valera 1909), bundled.

    Both translations are public domain (Debian's sword-text-web and sword-text-sparv). Splits
    hold out whole books: validation = Ruth, Jonah, Philemon (157 verses), test = Esther,
    Obadiah, Titus (234 verses), train = the other 60 books (30,686 verses); the same on every
    machine. Keys are the verse references ('Genesis 1:1'). Prepares offline.
    """

    name = "ptjax_en_es"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "WEB English / RV1909 Spanish verses; held-out books per split."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Verse-aligned English (WEB) and Spanish (RV 1909) Bible (bundled).",
            features=tfds.features.FeaturesDict(
                {
                    "en": tfds.features.Text(),
                    "es": tfds.features.Text(),
                    "ref": tfds.features.Text(),
                }
            ),
            supervised_keys=("en", "es"),
            homepage="https://ebible.org/web/",
            citation="World English Bible and Reina-Valera 1909, public domain.",
            license="Public domain",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Nothing to download: the corpus is package data.
        records = en_es_records()
        return {split: self._generate_examples(records, split) for split in EN_ES_SPLITS}

    def _generate_examples(self, records: list[dict[str, str]], split: str) -> Iterator:
        for record in records:
            if en_es_split(record["ref"]) == split:
                ref = record["ref"]
                yield ref, {"en": record["en"], "es": record["es"], "ref": ref}


# ----------------------------------------------------------------------------------------------
# A user's JSONL pairs.


def read_pairs(path: str) -> Iterator[tuple[int, str, str]]:
    """(line number, inputs, targets) of a JSONL file; blank lines skipped; errors name the line."""
    with files.open_file(path) as f:
        data = f.read()
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = 1 + data.count(b"\n", 0, e.start)
        raise files.DataError(
            f"{path}:{line}: invalid UTF-8 byte {data[e.start : e.start + 1]!r}; seq2seq_files "
            "must be UTF-8."
        ) from None
    # Split on "\n" only: str.splitlines would also split inside strings at U+2028 and the like.
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise files.DataError(f"{where}: invalid JSON ({e.msg}).") from None
        if not isinstance(record, dict):
            raise files.DataError(f"{where}: expected a JSON object per line.")
        values = []
        for key in ("inputs", "targets"):
            value = record.get(key)
            if value is None:
                raise files.DataError(
                    f"{where}: missing field {key!r}; seq2seq_files lines are "
                    '{"inputs": "...", "targets": "..."}.'
                )
            if not isinstance(value, str):
                raise files.DataError(
                    f"{where}: field {key!r} is {type(value).__name__}, expected a string."
                )
            values.append(value)
        yield line_number, values[0], values[1]


class Seq2SeqFiles(tfds.core.GeneratorBasedBuilder):
    """A user's (inputs, targets) text pairs: JSONL files, one {"inputs", "targets"} per line.

    Splits: `train` from dataset.train_files, `validation` from eval_files and `test` from
    test_files when given. Every file is read and checked when the builder is made (errors name
    file and line; a split without pairs is an error). Like `text_files`, the config name hashes
    the files' paths, sizes and mtimes, so edited files are prepared again.
    """

    name = "seq2seq_files"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def __init__(
        self,
        *,
        train_files: Sequence[str] | str,
        validation_files: Sequence[str] | str = (),
        test_files: Sequence[str] | str = (),
        **kwargs: Any,
    ):
        patterns = {
            "train": files.as_list(train_files),
            "validation": files.as_list(validation_files),
            "test": files.as_list(test_files),
        }
        if not patterns["train"]:
            raise files.DataError(
                "dataset.name='seq2seq_files' needs dataset.train_files (JSONL paths or globs)."
            )
        self._paths = {
            split: files.resolve(p, SEQ2SEQ_FILES_SPLITS[split])
            for split, p in patterns.items()
            if p
        }
        for split, paths in self._paths.items():
            if not any(True for path in paths for _ in read_pairs(path)):
                raise files.DataError(
                    f"dataset.{SEQ2SEQ_FILES_SPLITS[split]}: {paths} hold no (inputs, targets) "
                    "pairs."
                )
        key = json.dumps({s: files.fingerprint(p) for s, p in self._paths.items()}, sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        config = tfds.core.BuilderConfig(
            name=f"files_{digest}",
            description=", ".join(f"{len(p)} {s} files" for s, p in self._paths.items()),
        )
        kwargs.pop("config", None)  # Derived from the files, never chosen by the caller.
        super().__init__(config=config, **kwargs)
        # DatasetBuilder re-creates itself from this dict when pickled.
        self._original_state.update(
            train_files=patterns["train"],
            validation_files=patterns["validation"],
            test_files=patterns["test"],
        )

    def _create_builder_config(self, builder_config, version):
        del version  # The file-derived config of __init__ is used as is.
        return builder_config

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Local (inputs, targets) text pairs (JSONL).",
            features=tfds.features.FeaturesDict(
                {"inputs": tfds.features.Text(), "targets": tfds.features.Text()}
            ),
            supervised_keys=("inputs", "targets"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Local files only.
        return {split: self._generate_examples(paths) for split, paths in self._paths.items()}

    def _generate_examples(self, paths: Sequence[str]) -> Iterator:
        for file_index, path in enumerate(paths):
            for line, inputs, targets in read_pairs(path):
                yield f"{file_index}:{line}", {"inputs": inputs, "targets": targets}
