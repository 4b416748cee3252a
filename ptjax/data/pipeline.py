"""tf.data input pipelines: documents -> tokens -> packed causal-LM rows -> device-shaped batches.

Every array of a batch is shaped [local_device_count, per_device_batch_size, seq_len], ready for
pmap. The train iterator is infinite, deterministic from `config.seed`, and its exact position can
be saved and restored; eval iterators cover their split once, padded, in lockstep across processes.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import os
import time
from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np

from ptjax.data import corpora, objectives
from ptjax.data.tf_setup import import_tf
from ptjax.data.tokenizer import Tokenizer, load_tokenizer

tf = import_tf()

DOCS_PER_TOKENIZE_CALL = 256  # Documents tokenised together by one SentencePiece batch call.
FEATURE_KEYS = ("inputs", "targets", "segment_ids", "positions", "weights")


def _derive_seed(seed: int, purpose: str) -> int:
    """A distinct, stable tf.data op seed for each use of the run's seed."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def tokenize_documents(tokenizer: Tokenizer, texts: np.ndarray) -> np.ndarray:
    """Flat int32 stream `[eos] + tokens(doc)` for each document of a batch, concatenated."""
    ids = tokenizer.encode_batch(list(texts))  # texts: bytes objects, UTF-8.
    lengths = np.fromiter((len(x) for x in ids), np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), np.int32, count=int(lengths.sum()))
    starts = np.cumsum(lengths) - lengths  # Where each document starts in `flat`.
    return np.insert(flat, starts, np.int32(tokenizer.eos_id)).astype(np.int32)


def _tokenized_chunks(texts: tf.data.Dataset, tokenizer: Tokenizer) -> tf.data.Dataset:
    """Dataset of 1-D int32 token chunks, one per DOCS_PER_TOKENIZE_CALL documents, in order."""

    def tokenize(batch: tf.Tensor) -> tf.Tensor:
        # Stateless: tokenisation is a pure function, so iterator checkpoints need not save it.
        tokens = tf.numpy_function(
            functools.partial(tokenize_documents, tokenizer), [batch], tf.int32, stateful=False
        )
        tokens.set_shape([None])
        return tokens

    batches = texts.batch(DOCS_PER_TOKENIZE_CALL)
    return batches.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # The numpy_function (SentencePiece) holds no state; let checkpoints skip it.
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    return options


def _to_device_shape(
    features: dict[str, tf.Tensor], local_device_count: int, per_device_batch_size: int
) -> dict[str, tf.Tensor]:
    """[local_devices * per_device_batch, seq_len] -> [local_devices, per_device_batch, seq_len]."""
    return {
        key: tf.reshape(value, [local_device_count, per_device_batch_size, value.shape[-1]])
        for key, value in features.items()
    }


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


def num_eval_batches(rows_per_process: Sequence[int], batch_size: int, cap: int) -> int:
    """Eval batches every process yields in lockstep: the largest shard's, capped by `cap`
    (dataset.max_eval_batches; 0 = no cap)."""
    num_batches = max(math.ceil(rows / batch_size) for rows in rows_per_process)
    return min(num_batches, cap) if cap > 0 else num_batches


def _global_batch(config: ml_collections.ConfigDict, local_device_count: int) -> int:
    if local_device_count <= 0:
        raise ValueError(f"local_device_count={local_device_count} must be positive.")
    return local_device_count * config.per_device_batch_size


def _device_batches(
    rows: tf.data.Dataset,
    tokenizer: Tokenizer,
    batch_size: int,
    local_device_count: int,
    config: ml_collections.ConfigDict,
) -> tf.data.Dataset:
    """Packed rows -> LM feature batches shaped [local_devices, per_device_batch, seq_len]."""
    batches = rows.batch(batch_size, drop_remainder=True)  # [batch, seq_len + 1]
    batches = batches.map(
        lambda r: _to_device_shape(
            objectives.lm_features(r, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id),
            local_device_count,
            config.per_device_batch_size,
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return batches.prefetch(tf.data.AUTOTUNE).with_options(_options())


def lm_train_batches(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    data_dir: str,
    process_index: int,
    process_count: int,
    local_device_count: int,
) -> DataIterator:
    """Infinite causal-LM training batches of this process's shard, deterministic from config.seed.

    Documents are shuffled with a seeded buffer (reshuffled every epoch, deterministically), packed
    into rows, and rows are shuffled again so a batch does not hold consecutive rows of a document.
    """
    batch_size = _global_batch(config, local_device_count)
    dataset, split = config.dataset, config.dataset.train_split
    texts = corpora.load_texts(
        dataset,
        split,
        data_dir=data_dir,
        shard=(process_index, process_count),
        shuffle_files=True,
        seed=_derive_seed(config.seed, "files"),
    )
    if int(texts.cardinality()) == 0:
        raise ValueError(
            f"Process {process_index} of {process_count} got no documents of split {split!r} of "
            f"dataset {dataset.name!r}; the split has fewer documents than processes."
        )
    texts = texts.shuffle(
        dataset.shuffle_buffer,
        seed=_derive_seed(config.seed, "documents"),
        reshuffle_each_iteration=True,
    ).repeat()
    rows = objectives.pack_rows(
        _tokenized_chunks(texts, tokenizer), config.seq_len, pad_id=tokenizer.pad_id
    )
    rows = rows.shuffle(dataset.shuffle_buffer, seed=_derive_seed(config.seed, "rows"))
    batches = _device_batches(rows, tokenizer, batch_size, local_device_count, config)
    return DataIterator(batches, process_index=process_index, process_count=process_count)


@functools.lru_cache(maxsize=16)
def _eval_rows_per_process(
    dataset_items: tuple,
    split: str,
    data_dir: str,
    tokenizer_key: tuple,
    seq_len: int,
    process_count: int,
    max_rows: int,
) -> tuple[int, ...]:
    """Packed eval rows of each process's shard (counted up to max_rows; 0 = no cap)."""
    dataset = ml_collections.ConfigDict(dict(dataset_items))
    tokenizer = load_tokenizer(tokenizer_key[0])
    counts = []
    for process_index in range(process_count):
        texts = corpora.load_texts(
            dataset, split, data_dir=data_dir, shard=(process_index, process_count)
        )
        stream_length = 0
        for batch in texts.batch(DOCS_PER_TOKENIZE_CALL).as_numpy_iterator():
            stream_length += len(tokenize_documents(tokenizer, batch))
            if max_rows and (stream_length - 1) // seq_len >= max_rows:
                break
        counts.append(math.ceil((stream_length - 1) / seq_len) if stream_length > 1 else 0)
    return tuple(counts)


def eval_num_batches(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    data_dir: str,
    process_count: int,
    local_device_count: int,
) -> int:
    """Eval batches every process yields: the longest shard's, capped by max_eval_batches."""
    batch_size = _global_batch(config, local_device_count)
    cap = config.dataset.max_eval_batches
    rows = _eval_rows_per_process(
        tuple(sorted(config.dataset.to_dict().items())),
        config.dataset.eval_split,
        data_dir,
        (tokenizer.path, tokenizer.vocab_size),
        config.seq_len,
        process_count,
        cap * batch_size,
    )
    return num_eval_batches(rows, batch_size, cap)


def lm_eval_batches(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    data_dir: str,
    process_index: int,
    process_count: int,
    local_device_count: int,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's eval split once, packed like training, padded, in lockstep across processes.

    The last partial row is padded with pad_id (weight 0), the last partial batch with all-zero
    rows, and shorter shards with all-zero batches, so every process yields `eval_num_batches`
    batches of the full [local_devices, per_device_batch, seq_len] shape; no token is dropped
    (unless `dataset.max_eval_batches` cuts the split short).
    """
    batch_size = _global_batch(config, local_device_count)
    seq_len = config.seq_len
    num_batches = eval_num_batches(
        config,
        tokenizer,
        data_dir=data_dir,
        process_count=process_count,
        local_device_count=local_device_count,
    )
    texts = corpora.load_texts(
        config.dataset,
        config.dataset.eval_split,
        data_dir=data_dir,
        shard=(process_index, process_count),
    )
    rows = objectives.pack_rows(
        _tokenized_chunks(texts, tokenizer), seq_len, pad_id=tokenizer.pad_id, flush=True
    )
    padding_row = tf.data.Dataset.from_tensors(tf.fill([seq_len + 1], tokenizer.pad_id)).repeat()
    # Whole batches of real rows, then padding rows to fill the last batch and any missing ones.
    rows = rows.concatenate(padding_row).take(num_batches * batch_size)
    batches = _device_batches(rows, tokenizer, batch_size, local_device_count, config)
    return batches.as_numpy_iterator()


def measure_throughput(iterator: Iterator[dict[str, np.ndarray]], num_batches: int) -> float:
    """Target tokens (weight > 0) per second over `num_batches` batches, after one warm-up batch."""
    next(iterator)  # Fills shuffle buffers and starts the background threads.
    tokens = 0.0
    start = time.perf_counter()
    for _ in range(num_batches):
        tokens += float(next(iterator)["weights"].sum())
    return tokens / (time.perf_counter() - start)
