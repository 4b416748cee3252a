"""Datasets by config: `get_builder` (a local builder of ptjax.data.builders, or a prepared TFDS
catalogue dataset) and `load_texts`, the one way the pipelines read documents.

Local builders (`ptjax_bible` and `text_files` of `builders.text`, the labelled `ptjax_spam`
and `labeled_files` of `builders.labeled`, the text pairs `ptjax_en_es` and `seq2seq_files` of
`builders.pairs`) prepare offline into `data_dir` on first use. TFDS catalogue datasets
(`lm1b`, `c4/en`, ...) are read only if already prepared: ptjax never downloads.
"""

from __future__ import annotations

from collections.abc import Iterator

import ml_collections

from ptjax.data.builders import labeled, pairs
from ptjax.data.builders import text as text_builders
from ptjax.data.files import DataError  # noqa: F401 - the corpora's error, re-exported.
from ptjax.data.tf_setup import import_tf

tf = import_tf()

import tensorflow_datasets as tfds  # noqa: E402  (after import_tf: TF must be set up first)

LOCAL_DATASETS = ("ptjax_bible", "text_files", "ptjax_spam", "labeled_files")
# Local text-pair builders of `builders.pairs` (no 'text' feature: load_texts reads their
# dataset.text_key, e.g. 'en').
PAIR_DATASETS = ("ptjax_en_es", "seq2seq_files")
_DOWNLOAD_CONFIG = tfds.download.DownloadConfig(
    compute_stats=tfds.download.ComputeStatsMode.SKIP, try_download_gcs=False
)


def get_builder(
    config_dataset: ml_collections.ConfigDict, *, data_dir: str
) -> tfds.core.DatasetBuilder:
    """The TFDS builder named by `config.dataset`, prepared (local builders) or checked (others).

    `data_dir` '' means TFDS's default directory, never the current one.
    """
    data_dir = data_dir or None
    name = config_dataset.name
    if name == "ptjax_bible":
        builder = text_builders.PtjaxBible(data_dir=data_dir)
    elif name == "text_files":
        builder = text_builders.TextFiles(
            train_files=config_dataset.train_files,
            eval_files=config_dataset.eval_files,
            document_per=config_dataset.document_per,
            data_dir=data_dir,
        )
    elif name in ("ptjax_spam", "labeled_files"):
        if name == "ptjax_spam":
            builder = labeled.SpamAssassin(data_dir=data_dir)
        else:
            if not config_dataset.train_files:
                raise DataError(
                    "dataset.name='labeled_files' needs dataset.train_files (paths or globs of "
                    ".csv/.jsonl files; eval_files and test_files give the other splits)."
                )
            builder = labeled.LabeledTextFiles(
                train_files=config_dataset.train_files,
                validation_files=config_dataset.eval_files,
                test_files=config_dataset.test_files,
                data_dir=data_dir,
            )
    elif name in PAIR_DATASETS:
        if name == "ptjax_en_es":
            builder = pairs.PtjaxEnEs(data_dir=data_dir)
        else:
            builder = pairs.Seq2SeqFiles(
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
