"""Text corpora as TFDS builders, and `load_texts`, the one way the pipelines read documents.

Local builders (`ptjax_bible`, `text_files`, the labelled `ptjax_spam` and `labeled_files` of
`classification_corpora`, and the text pairs `ptjax_en_es` and `seq2seq_files` of
`translation_corpora`) prepare offline into `data_dir` on first use. TFDS catalogue datasets
(`lm1b`, `c4/en`, ...) are read only if already prepared: ptjax never downloads.
"""

from __future__ import annotations

import hashlib
import json
import lzma
from collections.abc import Iterator, Sequence

import importlib_resources
import ml_collections
from absl import logging

from ptjax.data import classification_corpora, files, translation_corpora
from ptjax.data.files import DataError  # noqa: F401 - the corpora's error, re-exported.
from ptjax.data.tf_setup import import_tf

tf = import_tf()

import tensorflow_datasets as tfds  # noqa: E402  (after import_tf: TF must be set up first)

LOCAL_DATASETS = ("ptjax_bible", "text_files", "ptjax_spam", "labeled_files")
# Local text-pair builders of `translation_corpora` (no 'text' feature: load_texts reads their
# dataset.text_key, e.g. 'en').
PAIR_DATASETS = ("ptjax_en_es", "seq2seq_files")
# A text_files document (line or file) longer than this is skipped, counted and logged with its
# file and line: an enormous line is almost always a dump or a missing newline, not prose.
MAX_DOCUMENT_BYTES = 16 << 20
VERSES_PER_PASSAGE = 8
HOLDOUT_EVERY = 20  # Document i is held out for validation when i % 20 == 19 (5%).
_TEXT_FEATURES = {"text": tfds.features.Text()}
_DOWNLOAD_CONFIG = tfds.download.DownloadConfig(
    compute_stats=tfds.download.ComputeStatsMode.SKIP, try_download_gcs=False
)


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


def get_builder(
    config_dataset: ml_collections.ConfigDict, *, data_dir: str
) -> tfds.core.DatasetBuilder:
    """The TFDS builder named by `config.dataset`, prepared (local builders) or checked (others).

    `data_dir` '' means TFDS's default directory, never the current one.
    """
    data_dir = data_dir or None
    name = config_dataset.name
    if name == "ptjax_bible":
        builder = PtjaxBible(data_dir=data_dir)
    elif name == "text_files":
        builder = TextFiles(
            train_files=config_dataset.train_files,
            eval_files=config_dataset.eval_files,
            document_per=config_dataset.document_per,
            data_dir=data_dir,
        )
    elif name in ("ptjax_spam", "labeled_files"):
        if name == "ptjax_spam":
            builder = classification_corpora.SpamAssassin(data_dir=data_dir)
        else:
            if not config_dataset.train_files:
                raise DataError(
                    "dataset.name='labeled_files' needs dataset.train_files (paths or globs of "
                    ".csv/.jsonl files; eval_files and test_files give the other splits)."
                )
            builder = classification_corpora.LabeledTextFiles(
                train_files=config_dataset.train_files,
                validation_files=config_dataset.eval_files,
                test_files=config_dataset.test_files,
                data_dir=data_dir,
            )
    elif name in PAIR_DATASETS:
        if name == "ptjax_en_es":
            builder = translation_corpora.PtjaxEnEs(data_dir=data_dir)
        else:
            builder = translation_corpora.Seq2SeqFiles(
                train_files=config_dataset.train_files,
                validation_files=config_dataset.eval_files,
                test_files=config_dataset.test_files,
                data_dir=data_dir,
            )
    else:
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise DataError(
                f"dataset.name={name!r} is not one of {list(LOCAL_DATASETS + PAIR_DATASETS)} or a "
                "TFDS catalogue name (see https://www.tensorflow.org/datasets/catalog)."
            ) from e
        if not builder.is_prepared():
            raise FileNotFoundError(
                f"TFDS dataset {name!r} is not prepared in data_dir {data_dir!r}, and ptjax never "
                f"downloads. Run `tfds build {name} --data_dir={data_dir}` first, or set "
                "dataset.data_dir to a directory holding the prepared data."
            )
        return builder
    builder.download_and_prepare(download_config=_DOWNLOAD_CONFIG)
    return builder


def base_name(name: str) -> str:
    """A TFDS name without its version: 'glue/sst2:2.0.0' -> 'glue/sst2'."""
    return name.split(":")[0]


def process_subsplit(split: str, process_index: int, process_count: int) -> str:
    """This process's even, contiguous part of `split` (the whole split for one process)."""
    if process_count == 1:
        return split
    return tfds.even_splits(split, n=process_count)[process_index]


def split_num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
    """Number of documents in `split` (may be a sub-split); unknown splits raise naming both."""
    try:
        return builder.info.splits[split].num_examples
    except (KeyError, ValueError) as e:
        raise DataError(
            f"Dataset {builder.name!r} has no split {split!r}; its splits are "
            f"{sorted(builder.info.splits)}. Set dataset.train_split / dataset.eval_split."
        ) from e


def load_texts(
    config_dataset: ml_collections.ConfigDict,
    split: str,
    *,
    data_dir: str,
    shard: tuple[int, int] | None = None,
    shuffle_files: bool = False,
    seed: int = 0,
) -> tf.data.Dataset:
    """This process's documents of `split` as a tf.data.Dataset of tf.string scalars.

    `shard=(process_index, process_count)` (default: JAX's) picks an even, contiguous, disjoint
    slice of the split (`tfds.even_splits`); a slice may be empty when there are more processes
    than documents. The whole split being empty raises.
    """
    if shard is None:
        import jax

        shard = (jax.process_index(), jax.process_count())
    process_index, process_count = shard
    if not 0 <= process_index < process_count:
        raise ValueError(f"shard={shard}: need 0 <= process_index < process_count.")
    builder = get_builder(config_dataset, data_dir=data_dir)
    name = config_dataset.name
    if split_num_examples(builder, split) == 0:
        raise DataError(f"Split {split!r} of dataset {name!r} has no documents.")
    text_key = "text" if name in LOCAL_DATASETS else config_dataset.text_key
    features = builder.info.features
    if text_key not in features:
        raise DataError(
            f"dataset.text_key={text_key!r} is not a feature of {name!r}; "
            f"features: {sorted(features.keys())}."
        )
    subsplit = process_subsplit(split, process_index, process_count)
    if split_num_examples(builder, subsplit) == 0:
        return tf.data.Dataset.from_tensor_slices(tf.constant([], tf.string))
    read_config = tfds.ReadConfig(
        shuffle_seed=seed,
        shuffle_reshuffle_each_iteration=True,
        try_autocache=False,  # A cache would be saved whole in every iterator checkpoint.
    )
    ds = builder.as_dataset(split=subsplit, shuffle_files=shuffle_files, read_config=read_config)
    return ds.map(lambda example: example[text_key], num_parallel_calls=tf.data.AUTOTUNE)


def iterate_texts(
    config_dataset: ml_collections.ConfigDict,
    split: str,
    *,
    data_dir: str,
    max_texts: int | None = None,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[str]:
    """Python strings of `split`, e.g. to train a tokenizer (default: whole split)."""
    ds = load_texts(config_dataset, split, data_dir=data_dir, shard=shard)
    if max_texts is not None:
        ds = ds.take(max_texts)
    for text in ds.as_numpy_iterator():
        yield text.decode("utf-8")
