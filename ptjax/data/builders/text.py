"""The plain-text corpora as TFDS builders: the bundled World English Bible (`ptjax_bible`) and
a user's text files (`text_files`), both yielding `{'text'}` documents and preparing offline
into `data_dir` on first use (`corpora.get_builder`)."""

from __future__ import annotations

import hashlib
import json
import lzma
from collections.abc import Iterator, Sequence

import importlib_resources
from absl import logging

from ptjax.data import files
from ptjax.data.files import DataError
from ptjax.data.tf_setup import import_tf

tf = import_tf()

import tensorflow_datasets as tfds  # noqa: E402  (after import_tf: TF must be set up first)

# A text_files document (line or file) longer than this is skipped, counted and logged with its
# file and line: an enormous line is almost always a dump or a missing newline, not prose.
MAX_DOCUMENT_BYTES = 16 << 20
VERSES_PER_PASSAGE = 8
HOLDOUT_EVERY = 20  # Document i is held out for validation when i % 20 == 19 (5%).
_TEXT_FEATURES = {"text": tfds.features.Text()}


def is_holdout(index: int) -> bool:
    """Whether document `index` of a local corpus is held out for validation (1 in 20)."""
    return index % HOLDOUT_EVERY == HOLDOUT_EVERY - 1


def bible_verses() -> list[str]:
    """The bundled World English Bible, one verse per item (37,457 verses)."""
    resource = importlib_resources.files("ptjax.data") / "assets" / "web_bible.txt.xz"
    return lzma.decompress(resource.read_bytes()).decode("utf-8").splitlines()


def bible_passages() -> list[str]:
    """Documents of `ptjax_bible`: runs of 8 consecutive verses joined by spaces, in order."""
    verses = bible_verses()
    return [
        " ".join(verses[i : i + VERSES_PER_PASSAGE])
        for i in range(0, len(verses), VERSES_PER_PASSAGE)
    ]


class PtjaxBible(tfds.core.GeneratorBasedBuilder):
    """World English Bible (public domain), bundled with ptjax, as passages of 8 verses.

    Documents are passages of 8 consecutive verses (the last one shorter), numbered in book order
    from 0. Passage i belongs to `validation` if i % 20 == 19 and to `train` otherwise: 4,449 train
    and 234 validation passages of 4,683, the same on every machine. Prepares offline.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Passages of 8 verses; every 20th passage is validation."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="World English Bible passages of 8 verses (bundled with ptjax).",
            features=tfds.features.FeaturesDict(_TEXT_FEATURES),
            homepage="https://ebible.org/web/",
            citation="World English Bible, public domain, https://ebible.org/web/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Nothing to download: the corpus is package data.
        passages = bible_passages()
        return {
            "train": self._generate_examples(passages, validation=False),
            "validation": self._generate_examples(passages, validation=True),
        }

    def _generate_examples(self, passages: list[str], validation: bool) -> Iterator:
        for index, passage in enumerate(passages):
            if is_holdout(index) == validation:
                yield index, {"text": passage}


def _decode(data: bytes, path: str, line_number: int) -> str:
    """UTF-8 text of `data`; invalid bytes raise naming the file and line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = line_number + data.count(b"\n", 0, e.start)
        raise DataError(
            f"{path}:{line}: invalid UTF-8 byte {data[e.start : e.start + 1]!r}; text_files reads "
            "UTF-8 only, re-encode the file (e.g. `iconv -t UTF-8`)."
        ) from None


def _too_long(path: str, line_number: int, too_long: list[int]) -> None:
    too_long[0] += 1
    if too_long[0] <= 10:
        logging.warning(
            "%s:%d: skipped a document of more than %d bytes (MAX_DOCUMENT_BYTES).",
            path,
            line_number,
            MAX_DOCUMENT_BYTES,
        )


def _lines(f, limit: int) -> Iterator[bytes | None]:
    """Lines of a binary file; None for a line of more than `limit` bytes, whose rest is read
    and dropped in bounded chunks (a gigabyte without a newline never sits in memory)."""
    while raw := f.readline(limit + 3):  # Room for the content, "\r\n" and one byte more.
        if len(raw) == limit + 3 and not raw.endswith(b"\n"):
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield None
        elif len(raw.rstrip(b"\r\n")) > limit:
            yield None
        else:
            yield raw


def read_documents(
    paths: Sequence[str],
    document_per: str,
    empty: list[int] | None = None,
    too_long: list[int] | None = None,
) -> Iterator[str]:
    """Documents of local text files (one per non-empty line, or per file).

    Empty documents and ones over MAX_DOCUMENT_BYTES are skipped and counted in `empty` and
    `too_long`; invalid UTF-8 raises DataError naming the file and line.
    """
    if document_per not in ("line", "file"):
        raise DataError(f"dataset.document_per={document_per!r}; expected 'line' or 'file'.")
    empty = empty if empty is not None else [0]
    too_long = too_long if too_long is not None else [0]
    limit = MAX_DOCUMENT_BYTES
    for path in paths:
        with files.open_file(path) as f:
            if document_per == "file":
                data = f.read(limit + 1)
                if len(data) > limit:
                    _too_long(path, 1, too_long)
                    continue
                text = _decode(data, path, 1).removeprefix("\ufeff").rstrip("\r\n")
                if text.strip():
                    yield text
                else:
                    empty[0] += 1
                continue
            for line_number, raw in enumerate(_lines(f, limit), start=1):
                if raw is None:
                    _too_long(path, line_number, too_long)
                    continue
                text = _decode(raw, path, line_number).rstrip("\r\n")
                if line_number == 1:
                    text = text.removeprefix("\ufeff")
                if text.strip():
                    yield text
                else:
                    empty[0] += 1


class TextFiles(tfds.core.GeneratorBasedBuilder):
    """A user's local UTF-8 text files, one document per non-empty line or per file.

    The builder config name hashes the resolved file list with each file's size and mtime, so
    edited files are prepared again into a new directory instead of reusing stale data. Without
    `eval_files`, train document i goes to `validation` when i % 20 == 19 (5%; with under 20
    documents, the last one), counting documents in file-list order.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def __init__(
        self,
        *,
        train_files: Sequence[str] | str,
        eval_files: Sequence[str] | str = (),
        document_per: str = "line",
        **kwargs,
    ):
        if document_per not in ("line", "file"):
            raise DataError(f"dataset.document_per={document_per!r}; expected 'line' or 'file'.")
        train_patterns = files.as_list(train_files)
        if not train_patterns:
            raise DataError("dataset.train_files is empty; give paths or globs of text files.")
        self._train_patterns = train_patterns
        self._eval_patterns = files.as_list(eval_files)
        self._train_paths = files.resolve(train_patterns, "train_files")
        self._eval_paths = files.resolve(self._eval_patterns, "eval_files")
        self._document_per = document_per
        key = json.dumps(
            {
                "document_per": document_per,
                "train": files.fingerprint(self._train_paths),
                "eval": files.fingerprint(self._eval_paths),
            },
            sort_keys=True,
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        config = tfds.core.BuilderConfig(
            name=f"{document_per}_{digest}",
            description=f"{len(self._train_paths)} train / {len(self._eval_paths)} eval files.",
        )
        kwargs.pop("config", None)  # Derived from the files, never chosen by the caller.
        super().__init__(config=config, **kwargs)
        # DatasetBuilder re-creates itself from this dict when pickled.
        self._original_state.update(
            train_files=train_patterns, eval_files=self._eval_patterns, document_per=document_per
        )

    def _create_builder_config(self, builder_config, version):
        del version  # The file-derived config of __init__ is used as is; no class-level list.
        return builder_config

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Local UTF-8 text files.",
            features=tfds.features.FeaturesDict(_TEXT_FEATURES),
            metadata=tfds.core.MetadataDict(),
        )

    def _count(
        self, paths: Sequence[str], key: str, patterns: Sequence[str]
    ) -> tuple[int, int, int]:
        """(documents, skipped empty ones, skipped too long ones); validates UTF-8 before
        anything is written."""
        empty, too_long = [0], [0]
        count = sum(1 for _ in read_documents(paths, self._document_per, empty, too_long))
        if count == 0:
            raise DataError(
                f"dataset.{key}={','.join(patterns)!r}: no non-empty documents "
                f"(document_per={self._document_per!r}; {empty[0]} empty and {too_long[0]} over "
                f"{MAX_DOCUMENT_BYTES} bytes skipped) in {paths}."
            )
        return count, empty[0], too_long[0]

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Local files only.
        num_train, *train_skipped = self._count(
            self._train_paths, "train_files", self._train_patterns
        )
        counts = {"train_files": train_skipped}
        if self._eval_paths:
            _, *counts["eval_files"] = self._count(
                self._eval_paths, "eval_files", self._eval_patterns
            )
        skipped = {key: empty for key, (empty, _) in counts.items()}
        too_long = {key: long for key, (_, long) in counts.items()}
        logging.info(
            "text_files: skipped empty documents %s and documents over %d bytes %s",
            skipped,
            MAX_DOCUMENT_BYTES,
            too_long,
        )
        self.info.metadata["empty_documents_skipped"] = skipped
        self.info.metadata["too_long_documents_skipped"] = too_long
        if self._eval_paths:
            return {
                "train": self._generate_examples(self._train_paths, "all", num_train),
                "validation": self._generate_examples(self._eval_paths, "all", num_train),
            }
        splits = {"train": self._generate_examples(self._train_paths, "train", num_train)}
        if num_train >= 2:
            splits["validation"] = self._generate_examples(
                self._train_paths, "validation", num_train
            )
        return splits

    def _generate_examples(self, paths: Sequence[str], keep: str, num_docs: int) -> Iterator:
        for index, text in enumerate(read_documents(paths, self._document_per)):
            small = 2 <= num_docs < HOLDOUT_EVERY  # Hold out the last document then.
            held_out = is_holdout(index) or (small and index == num_docs - 1)
            if keep == "all" or held_out == (keep == "validation"):
                yield index, {"text": text}
