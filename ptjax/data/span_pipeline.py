"""tf.data input pipeline of T5's span-corruption pretraining (the batches of
ptjax.data.seq2seq_pipeline's SEQ2SEQ_KEYS, shaped as its text pairs are).

Documents (`corpora.load_texts`) are tokenised and concatenated without separators (T5's
reduce_concat_tokens), the stream is cut into chunks of `random_spans_helper(seq_len)[0]` tokens,
and each chunk is corrupted (`span_corruption`), which makes its encoder inputs fill the row
exactly; so rows hold one chunk each (packing would add nothing). The last chunk of a finite
(eval) stream may be shorter and is padded. Sentinels are the top ids of the model vocabulary
`seq2seq_pipeline.model_vocab_size(config, tokenizer)`. Decoder length = `seq2seq.target_len`
when set (> 0), else the targets length that `span_corruption.random_spans_helper(seq_len)`
gives (114 for 512). Train iterators are infinite, deterministic from config.seed and
checkpointable; eval iterators cover their split once, the last batch padded with all-zero rows.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import ml_collections
import numpy as np

from ptjax import config as config_lib
from ptjax.data import corpora, iterators, seq2seq_pipeline
from ptjax.data import span_corruption as sc
from ptjax.data.tf_setup import import_tf
from ptjax.data.tokenizer import Tokenizer, load_tokenizer

tf = import_tf()


def span_corruption_lengths(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """(raw tokens per chunk, encoder length, decoder length) of span-corruption batches."""
    tokens_length, targets_length = sc.random_spans_helper(
        config.seq_len,
        noise_density=config.seq2seq.noise_density,
        mean_noise_span_length=config.seq2seq.mean_noise_span_length,
    )
    target_len = config.seq2seq.target_len or targets_length
    if target_len < targets_length:
        raise config_lib.ConfigError(
            f"Config key seq2seq.target_len={target_len} is shorter than the {targets_length} "
            f"target tokens that span corruption makes of seq_len={config.seq_len} inputs; set it "
            f">= {targets_length} or 0 (= {targets_length})."
        )
    return tokens_length, config.seq_len, target_len


def _span_vocab(config: ml_collections.ConfigDict, tokenizer: Tokenizer, tokens_length: int) -> int:
    """The model vocabulary, checked to hold a sentinel for every span of a full chunk."""
    vocab_size = seq2seq_pipeline.model_vocab_size(config, tokenizer)
    _, num_spans = sc.noise_counts(
        tokens_length, config.seq2seq.noise_density, config.seq2seq.mean_noise_span_length
    )
    sc.check_sentinel_room(tokenizer.vocab_size, vocab_size, num_spans)
    return vocab_size


def _concat_tokens(tokenizer: Tokenizer, texts: np.ndarray) -> np.ndarray:
    """numpy_function body: the tokens of a group of documents, concatenated (no separator)."""
    ids = tokenizer.encode_batch(list(texts))
    return np.fromiter((t for doc in ids for t in doc), np.int32, count=sum(map(len, ids)))


def split_chunks(groups: tf.data.Dataset, length: int, *, flush: bool = False) -> tf.data.Dataset:
    """1-D int32 token groups -> consecutive chunks of `length` tokens; with `flush`, the tokens
    left at the end of a finite stream form one last, shorter chunk. Leftovers are carried by
    `Dataset.scan`, so they are part of the iterator's checkpoints."""
    flagged = groups.map(lambda tokens: (tokens, False))
    if flush:
        flagged = flagged.concatenate(tf.data.Dataset.from_tensors((tf.zeros([0], tf.int32), True)))

    def step(leftover: tf.Tensor, element: tuple) -> tuple:
        tokens, final = element
        stream = tf.concat([leftover, tokens], axis=0)
        num_full = tf.size(stream) // length
        rows = tf.reshape(stream[: num_full * length], [-1, length])  # [num_full, length]
        rest = stream[num_full * length :]
        last = tf.cast(final & (tf.size(rest) > 0), tf.int32)  # 1: emit the rest as a chunk.
        padded = tf.pad(rest, [[0, length - tf.size(rest)]])[None, :][:last]
        rows = tf.concat([rows, padded], axis=0)
        sizes = tf.concat([tf.fill([num_full], length), tf.size(rest)[None][:last]], axis=0)
        rest = rest[: tf.size(rest) * (1 - tf.cast(final, tf.int32))]
        return rest, (rows, sizes)

    chunks = flagged.scan(tf.zeros([0], tf.int32), step).unbatch()
    return chunks.map(lambda row, size: row[:size])


def _span_rows(
    texts: tf.data.Dataset,
    tokenizer: Tokenizer,
    config: ml_collections.ConfigDict,
    *,
    seed: int,
    flush: bool,
) -> tf.data.Dataset:
    """Documents -> corrupted rows of seq2seq_pipeline.SEQ2SEQ_KEYS (one chunk per row)."""
    tokens_length, inputs_len, targets_len = span_corruption_lengths(config)
    vocab_size = _span_vocab(config, tokenizer, tokens_length)
    tokenize = functools.partial(_concat_tokens, tokenizer)

    def tokens_of(batch: tf.Tensor) -> tf.Tensor:
        # Stateless: tokenisation is a pure function, so iterator checkpoints need not save it.
        tokens = tf.numpy_function(tokenize, [batch], tf.int32, stateful=False)
        tokens.set_shape([None])
        return tokens

    groups = texts.batch(iterators.DOCS_PER_TOKENIZE_CALL).map(
        tokens_of, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    pairs = sc.corrupt_dataset(
        split_chunks(groups, tokens_length, flush=flush),
        seed=seed,
        vocab_size=vocab_size,
        eos_id=tokenizer.eos_id,
        noise_density=config.seq2seq.noise_density,
        mean_noise_span_length=config.seq2seq.mean_noise_span_length,
    )

    def features(pair: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = {}
        for side, tokens, length in (
            ("encoder", pair["inputs"], inputs_len),
            ("decoder", pair["targets"], targets_len),
        ):
            n = tf.size(tokens)
            real = tf.cast(tf.range(length) < n, tf.int32)
            out[f"{side}_segment_ids"] = real
            out[f"{side}_positions"] = tf.range(length) * real
            padded = tf.ensure_shape(tf.pad(tokens, [[0, length - n]]), [length])
            out["encoder_input_tokens" if side == "encoder" else "decoder_target_tokens"] = padded
        targets = out["decoder_target_tokens"]
        out["decoder_input_tokens"] = tf.pad(targets[:-1], [[1, 0]]) * out["decoder_segment_ids"]
        out["decoder_loss_weights"] = tf.cast(out["decoder_segment_ids"], tf.float32)
        return {key: out[key] for key in seq2seq_pipeline.SEQ2SEQ_KEYS}

    return pairs.map(features, num_parallel_calls=tf.data.AUTOTUNE)


def span_corruption_train_batches(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    data_dir: str,
    process_index: int,
    process_count: int,
    local_device_count: int,
) -> iterators.DataIterator:
    """Infinite span-corruption batches (SEQ2SEQ_KEYS) of this process's shard of documents.

    Documents are shuffled (anew every epoch), concatenated, chunked and corrupted (chunk i of
    the run with seed (derived seed, i)); rows are shuffled and batched; checkpointable.
    """
    span_corruption_lengths(config)  # A too-short seq_len or target_len fails here.
    texts = iterators.training_documents(
        config, data_dir=data_dir, process_index=process_index, process_count=process_count
    )
    rows = _span_rows(
        texts, tokenizer, config, seed=iterators.derive_seed(config.seed, "noise"), flush=False
    )
    return iterators.train_iterator(
        rows,
        config,
        process_index=process_index,
        process_count=process_count,
        local_device_count=local_device_count,
    )


@functools.lru_cache(maxsize=16)
def _span_eval_rows_per_process(
    dataset_items: tuple,
    split: str,
    data_dir: str,
    tokenizer_key: tuple,
    tokens_length: int,
    process_count: int,
) -> tuple[int, ...]:
    """Span-corruption eval rows (chunks) of each process's shard."""
    dataset = ml_collections.ConfigDict(dict(dataset_items))
    tokenizer = load_tokenizer(tokenizer_key[0])
    counts = []
    for process_index in range(process_count):
        texts = corpora.load_texts(
            dataset, split, data_dir=data_dir, shard=(process_index, process_count)
        )
        num_tokens = 0
        for group in texts.batch(iterators.DOCS_PER_TOKENIZE_CALL).as_numpy_iterator():
            num_tokens += sum(map(len, tokenizer.encode_batch(list(group))))
        counts.append(math.ceil(num_tokens / tokens_length))
    return tuple(counts)


def span_corruption_eval_num_batches(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    data_dir: str,
    process_count: int,
    local_device_count: int,
) -> int:
    """Eval batches every process yields: the longest shard's, capped by max_eval_batches."""
    tokens_length, _, _ = span_corruption_lengths(config)
    rows = _span_eval_rows_per_process(
        tuple(sorted(config.dataset.to_dict().items())),
        config.dataset.eval_split,
        data_dir,
        (tokenizer.path, tokenizer.vocab_size),
        tokens_length,
        process_count,
    )
    batch_size = iterators.global_batch_size(config, local_device_count)
    return iterators.num_eval_batches(rows, batch_size, config.dataset.max_eval_batches)


def span_corruption_eval_batches(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    data_dir: str,
    process_index: int,
    process_count: int,
    local_device_count: int,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's eval documents once, corrupted the same way on every call.

    Chunked like training (unshuffled, the last chunk shorter), with noise from a fixed seed
    derived from config.seed; padded with all-zero rows so every process yields
    `span_corruption_eval_num_batches` batches.
    """
    _, inputs_len, targets_len = span_corruption_lengths(config)
    num_batches = span_corruption_eval_num_batches(
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
    rows = _span_rows(
        texts, tokenizer, config, seed=iterators.derive_seed(config.seed, "eval_noise"), flush=True
    )
    return iterators.eval_iterator(
        rows,
        seq2seq_pipeline.padding_row(inputs_len, targets_len),
        config,
        num_batches=num_batches,
        local_device_count=local_device_count,
    )
