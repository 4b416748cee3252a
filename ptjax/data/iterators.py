"""The skeleton every input pipeline shares; objectives plug in their rows and features.

A train iterator is `shuffled_epochs` (this process's items, checked non-empty, shuffled with a
seeded buffer anew every epoch, repeated), the objective's rows, then `train_iterator` (rows
shuffled again, batched, the objective's batch features, shaped [local_devices,
per_device_batch, ...] for pmap, wrapped in a `DataIterator` whose exact position is saved and
restored with the run). An eval iterator is the objective's rows of this process's shard once,
then `eval_iterator`: all-zero padding rows (weight 0) fill the last batch and the batches a
shorter shard lacks, so every process yields `num_eval_batches` batches in lockstep.

Seeds: every shuffle and draw takes its own op seed, `derive_seed(config.seed, purpose)`.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator, Sequence

import ml_collections
import numpy as np

from ptjax.data import corpora
from ptjax.data.files import DataError
from ptjax.data.tf_setup import import_tf

tf = import_tf()

DOCS_PER_TOKENIZE_CALL = 256  # Documents (or examples) tokenised together by one batch call.
BatchFeatures = Callable[[tf.data.Dataset], tf.data.Dataset]


def derive_seed(seed: int, purpose: str) -> int:
    """A distinct, stable tf.data op seed for each use of the run's seed."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def global_batch_size(config: ml_collections.ConfigDict, local_device_count: int) -> int:
    """Rows of one batch of this process: local devices x per_device_batch_size."""
    if local_device_count <= 0:
        raise ValueError(f"local_device_count={local_device_count} must be positive.")
    return local_device_count * config.per_device_batch_size


def dataset_options() -> tf.data.Options:
    """Deterministic order; the stateless numpy_functions (tokenisers) are left out of
    iterator checkpoints."""
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    return options


def to_device_shape(
    features: dict[str, tf.Tensor], local_device_count: int, per_device_batch_size: int
) -> dict[str, tf.Tensor]:
    """[local_devices * per_device_batch, ...] -> [local_devices, per_device_batch, ...]."""
    return {
        key: tf.reshape(value, [local_device_count, per_device_batch_size, *value.shape[1:]])
        for key, value in features.items()
    }


def num_eval_batches(rows_per_process: Sequence[int], batch_size: int, cap: int) -> int:
    """Eval batches every process yields in lockstep: the largest shard's, capped by `cap`
    (dataset.max_eval_batches; 0 = no cap)."""
    num_batches = max(math.ceil(rows / batch_size) for rows in rows_per_process)
    return min(num_batches, cap) if cap > 0 else num_batches


class DataIterator:
    """Iterator of numpy batches whose exact position can be saved to and restored from disk."""

    def __init__(self, dataset: tf.data.Dataset, *, process_index: int = 0, process_count: int = 1):
        self._dataset = dataset
        self._iterator = iter(dataset)
        self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)
        # One file per process and process count: a restore with a different count fails loudly.
        self._name = f"data_iterator-process{process_index}of{process_count}"
        # The seed the pipeline's order was drawn from (set by the trainer; checkpoints record it).
        self.data_seed: int | None = None

    @property
    def element_spec(self) -> dict:
        return self._dataset.element_spec

    def __iter__(self) -> DataIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return {key: value.numpy() for key, value in next(self._iterator).items()}

    def checkpoint_prefix(self, directory: str) -> str:
        return os.path.join(directory, self._name)

    def save(self, directory: str) -> str:
        """Writes the iterator position (shuffle buffers included) into `directory`."""
        tf.io.gfile.makedirs(directory)
        return self._checkpoint.write(self.checkpoint_prefix(directory))

    def restore(self, directory: str) -> None:
        """Moves this iterator to the position saved by `save(directory)`."""
        prefix = self.checkpoint_prefix(directory)
        if not tf.io.gfile.exists(prefix + ".index"):
            raise FileNotFoundError(
                f"No data iterator checkpoint {prefix!r} (from save() with the same process index "
                "and count)."
            )
        self._checkpoint.read(prefix).assert_consumed()


def shuffled_epochs(
    items: tf.data.Dataset,
    config: ml_collections.ConfigDict,
    *,
    purpose: str,
    process_index: int,
    process_count: int,
    what: str = "documents",
) -> tf.data.Dataset:
    """This process's `items` (documents or examples) shuffled anew every epoch, forever.

    An empty shard raises DataError: the split has fewer `what` than processes.
    """
    if int(items.cardinality()) == 0:
        dataset, split = config.dataset, config.dataset.train_split
        raise DataError(
            f"Process {process_index} of {process_count} got no {what} of split {split!r} of "
            f"dataset {dataset.name!r}; the split has fewer {what} than processes."
        )
    return items.shuffle(
        config.dataset.shuffle_buffer,
        seed=derive_seed(config.seed, purpose),
        reshuffle_each_iteration=True,
    ).repeat()


def training_documents(
    config: ml_collections.ConfigDict, *, data_dir: str, process_index: int, process_count: int
) -> tf.data.Dataset:
    """This process's documents of the train split (files read in a seeded order), shuffled
    anew every epoch, forever: what the document objectives (LM, MLM, span corruption) read."""
    texts = corpora.load_texts(
        config.dataset,
        config.dataset.train_split,
        data_dir=data_dir,
        shard=(process_index, process_count),
        shuffle_files=True,
        seed=derive_seed(config.seed, "files"),
    )
    return shuffled_epochs(
        texts, config, purpose="documents", process_index=process_index, process_count=process_count
    )


def _batches(
    rows: tf.data.Dataset,
    config: ml_collections.ConfigDict,
    local_device_count: int,
    features: BatchFeatures | None,
) -> tf.data.Dataset:
    """Rows -> batches of the objective's features, shaped for the local devices."""
    batches = rows.batch(global_batch_size(config, local_device_count), drop_remainder=True)
    if features is not None:
        batches = features(batches)
    batches = batches.map(
        lambda batch: to_device_shape(batch, local_device_count, config.per_device_batch_size),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return batches.prefetch(tf.data.AUTOTUNE).with_options(dataset_options())


def train_iterator(
    rows: tf.data.Dataset,
    config: ml_collections.ConfigDict,
    *,
    process_index: int,
    process_count: int,
    local_device_count: int,
    features: BatchFeatures | None = None,
    shuffle_rows: bool = True,
) -> DataIterator:
    """Infinite `rows` -> a checkpointable iterator of device-shaped batches.

    With `shuffle_rows`, rows are shuffled again (seeded) so a batch does not hold consecutive
    rows of one document; `features` maps the batched rows to the objective's batch features.
    """
    if shuffle_rows:
        rows = rows.shuffle(config.dataset.shuffle_buffer, seed=derive_seed(config.seed, "rows"))
    batches = _batches(rows, config, local_device_count, features)
    return DataIterator(batches, process_index=process_index, process_count=process_count)


def eval_iterator(
    rows: tf.data.Dataset,
    padding_row: dict[str, tf.Tensor] | tf.Tensor,
    config: ml_collections.ConfigDict,
    *,
    num_batches: int,
    local_device_count: int,
    features: BatchFeatures | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """This shard's rows once, then `padding_row`s, cut to `num_batches` device-shaped batches."""
    padding = tf.data.Dataset.from_tensors(padding_row).repeat()
    rows = rows.concatenate(padding).take(
        num_batches * global_batch_size(config, local_device_count)
    )
    return _batches(rows, config, local_device_count, features).as_numpy_iterator()
