"""The causal-LM input pipeline: documents -> tokens -> packed rows -> next-token batches.

Built on the shared skeleton (ptjax.data.iterators): every array of a batch is shaped
[local_device_count, per_device_batch_size, seq_len]; the train iterator is infinite,
deterministic from `config.seed` and checkpointable; eval iterators cover their split once,
padded, in lockstep across processes.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Iterator

import ml_collections
import numpy as np

from ptjax.data import corpora, iterators, objectives
from ptjax.data.tf_setup import import_tf
from ptjax.data.tokenizer import Tokenizer, load_tokenizer

tf = import_tf()

DOCS_PER_TOKENIZE_CALL = iterators.DOCS_PER_TOKENIZE_CALL
FEATURE_KEYS = ("inputs", "targets", "segment_ids", "positions", "weights")


def tokenize_documents(tokenizer: Tokenizer, texts: np.ndarray) -> np.ndarray:
    """Flat int32 stream of a batch's documents, concatenated: `[eos] + tokens(doc)` each
    (GPT-2's framing, ptjax's own tokenizers'), or `[bos] + tokens(doc) + [eos]` where the
    tokenizer says its model reads documents so (`bos_documents`: Llama's)."""
    ids = tokenizer.encode_batch(list(texts))  # texts: bytes objects, UTF-8.
    if tokenizer.bos_documents:
        bos, eos = [tokenizer.bos_id], [tokenizer.eos_id]
        framed = itertools.chain.from_iterable(bos + x + eos for x in ids)
        return np.fromiter(framed, np.int32, count=sum(len(x) + 2 for x in ids))
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


def _lm_features(tokenizer: Tokenizer) -> iterators.BatchFeatures:
    """Batched rows [batch, seq_len + 1] -> next-token features (objectives.lm_features)."""

    def features(batches: tf.data.Dataset) -> tf.data.Dataset:
        return batches.map(
            lambda rows: objectives.lm_features(
                rows,
                eos_id=tokenizer.eos_id,
                pad_id=tokenizer.pad_id,
                bos_id=tokenizer.bos_id if tokenizer.bos_documents else None,
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    return features


def lm_train_batches(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    data_dir: str,
    process_index: int,
    process_count: int,
    local_device_count: int,
) -> iterators.DataIterator:
    """Infinite causal-LM training batches of this process's shard, deterministic from config.seed.

    Documents are shuffled with a seeded buffer (reshuffled every epoch, deterministically), packed
    into rows, and rows are shuffled again so a batch does not hold consecutive rows of a document.
    """
    iterators.global_batch_size(config, local_device_count)  # A bad device count fails first.
    texts = iterators.training_documents(
        config, data_dir=data_dir, process_index=process_index, process_count=process_count
    )
    rows = objectives.pack_rows(
        _tokenized_chunks(texts, tokenizer), config.seq_len, pad_id=tokenizer.pad_id
    )
    return iterators.train_iterator(
        rows,
        config,
        process_index=process_index,
        process_count=process_count,
        local_device_count=local_device_count,
        features=_lm_features(tokenizer),
    )


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
    batch_size = iterators.global_batch_size(config, local_device_count)
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
    return iterators.num_eval_batches(rows, batch_size, cap)


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
        _tokenized_chunks(texts, tokenizer), config.seq_len, pad_id=tokenizer.pad_id, flush=True
    )
    return iterators.eval_iterator(
        rows,
        tf.fill([config.seq_len + 1], tokenizer.pad_id),
        config,
        num_batches=num_batches,
        local_device_count=local_device_count,
        features=_lm_features(tokenizer),
    )


def measure_throughput(iterator: Iterator[dict[str, np.ndarray]], num_batches: int) -> float:
    """Target tokens (weight > 0) per second over `num_batches` batches, after one warm-up batch."""
    next(iterator)  # Fills shuffle buffers and starts the background threads.
    tokens = 0.0
    start = time.perf_counter()
    for _ in range(num_batches):
        tokens += float(next(iterator)["weights"].sum())
    return tokens / (time.perf_counter() - start)
