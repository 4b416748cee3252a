"""T5's span-corruption objective as TensorFlow ops, by stateless RNG (t5.data.preprocessors).

A chunk of `length` tokens gets `num_noise_tokens = round(length * noise_density)` noise tokens
(at least 1, at most length - 1) in `num_noise_spans = round(num_noise_tokens /
mean_noise_span_length)` spans (at least 1, at most the number of non-noise tokens). Noise and
non-noise tokens are each cut into that many non-empty spans at random points, and the spans
alternate, non-noise first. The encoder input keeps the non-noise tokens and replaces noise span
i by sentinel i; the target is each sentinel followed by its noise span; both end with eos:

    tokens   a b c d e f g h        (noise: c d, g)
    inputs   a b <s0> e f <s1> h <eos>
    targets  <s0> c d <s1> g <eos>

Sentinels and the vocabulary. Sentinel i is `vocab_size - 1 - i`, counted down from the top of
the *model's* vocabulary. As in T5 (which adds 100 extra ids to its 32,000 SentencePiece pieces),
the model vocabulary is the tokenizer's plus `extra_ids` ids the tokenizer never emits:
`model_vocab_size(tokenizer.vocab_size, extra_ids)`. `check_sentinel_room` raises when a
vocabulary leaves fewer than the needed sentinel ids above the tokenizer's pieces, so a sentinel
can never be read as a real token. `tokenizer.decode` knows no sentinel: drop or map ids
>= tokenizer.vocab_size before decoding.

Every random draw is stateless from a [2] int seed; `corrupt_dataset` derives element i's seed
from (seed, i), so a restored tf.data iterator corrupts exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ptjax import config as config_lib
from ptjax.data import mlm
from ptjax.data.tf_setup import import_tf

tf = import_tf()

EXTRA_IDS = 100  # T5's sentinel ids above the SentencePiece vocabulary.


def _check_rates(noise_density: float, mean_noise_span_length: float) -> None:
    if not 0.0 < noise_density < 1.0:
        raise config_lib.ConfigError(f"noise_density={noise_density} must lie in (0, 1).")
    if not mean_noise_span_length >= 1.0:
        raise config_lib.ConfigError(
            f"mean_noise_span_length={mean_noise_span_length} must be >= 1."
        )


def noise_counts(
    length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
    """(num_noise_tokens, num_noise_spans) of a chunk of `length` >= 2 tokens (module docstring).

    Python's round and tf.round both round half to even, in float64 here and in the TF ops.
    """
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_noise_span_length), 1)
    return num_noise, min(num_spans, length - num_noise)


def corrupted_lengths(
    tokens_length: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    extra_tokens_per_span_inputs: int = 1,
    extra_tokens_per_span_targets: int = 1,
) -> tuple[int, int]:
    """(inputs length, targets length), eos included, after corrupting `tokens_length` tokens."""
    num_noise, num_spans = noise_counts(tokens_length, noise_density, mean_noise_span_length)
    return (
        tokens_length - num_noise + num_spans * extra_tokens_per_span_inputs + 1,
        num_noise + num_spans * extra_tokens_per_span_targets + 1,
    )


def random_spans_helper(
    inputs_length: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    extra_tokens_per_span_inputs: int = 1,
    extra_tokens_per_span_targets: int = 1,
) -> tuple[int, int]:
    """(tokens_length, targets_length): the most raw tokens whose corrupted inputs (eos included)
    fit `inputs_length`, and their targets' length (eos included). T5's helper: 512 -> (568, 114).

    The inputs fill `inputs_length` exactly unless one more raw token adds both a kept token and
    a sentinel (then they are one short); `corrupted_lengths(tokens_length)` gives the exact pair.
    """
    _check_rates(noise_density, mean_noise_span_length)
    if inputs_length < 3:
        raise config_lib.ConfigError(
            f"inputs_length={inputs_length} is too short for span corruption: inputs need at "
            "least one kept token, one sentinel and eos (3 tokens); raise seq_len."
        )

    def inputs_of(tokens_length: int) -> int:
        return corrupted_lengths(
            tokens_length,
            noise_density,
            mean_noise_span_length,
            extra_tokens_per_span_inputs,
            extra_tokens_per_span_targets,
        )[0]

    tokens_length = max(inputs_length - 1, 2)
    while inputs_of(tokens_length + 1) <= inputs_length:
        tokens_length += 1
    _, targets_length = corrupted_lengths(
        tokens_length,
        noise_density,
        mean_noise_span_length,
        extra_tokens_per_span_inputs,
        extra_tokens_per_span_targets,
    )
    # T5's tweak: at density 0.5, make targets no longer than the (round-numbered) inputs.
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def model_vocab_size(tokenizer_vocab_size: int, extra_ids: int = EXTRA_IDS) -> int:
    """The model's vocabulary: the tokenizer's pieces, then `extra_ids` sentinel ids on top."""
    return tokenizer_vocab_size + extra_ids


def sentinel_ids(vocab_size: int, num_sentinels: int) -> np.ndarray:
    """[num_sentinels] int32: sentinel i is vocab_size - 1 - i."""
    return vocab_size - 1 - np.arange(num_sentinels, dtype=np.int32)


def check_sentinel_room(tokenizer_vocab_size: int, vocab_size: int, num_sentinels: int) -> None:
    """Raises ConfigError unless the top `num_sentinels` ids of `vocab_size` lie above every id
    the tokenizer can emit (its ids are 0 .. tokenizer_vocab_size - 1)."""
    room = vocab_size - tokenizer_vocab_size
    if room < num_sentinels:
        raise config_lib.ConfigError(
            f"Span corruption needs {num_sentinels} sentinel ids above the tokenizer's "
            f"{tokenizer_vocab_size} pieces, but the model vocabulary of {vocab_size} leaves "
            f"{max(room, 0)}. Use a model vocab_size of tokenizer vocab_size + extra ids "
            f"(T5: + {EXTRA_IDS}; set model.vocab_size=0 and seq2seq.extra_ids >= "
            f"{num_sentinels}), or lower seq_len / noise_density (fewer spans per example)."
        )


def _shuffle(values: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    order = tf.argsort(tf.random.stateless_uniform(tf.shape(values), seed=seed))
    return tf.gather(values, order)


def _random_segmentation(num_items: tf.Tensor, num_segments: tf.Tensor, seed) -> tf.Tensor:
    """[num_segments] int32 lengths, each >= 1, summing to num_items, at random cut points."""
    first_in_segment = tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32)
    first_in_segment = tf.pad(_shuffle(first_in_segment, seed), [[1, 0]])  # [num_items]
    segment_id = tf.cumsum(first_in_segment)
    return tf.math.segment_sum(tf.ones_like(segment_id), segment_id)


def random_spans_noise_mask(
    length: Any,
    seed: Any,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> tf.Tensor:
    """[length] bool, True on noise tokens: alternating non-noise/noise spans, non-noise first.

    A chunk of one token (the end of a finite stream) is drawn as two and cut back to one.
    """
    _check_rates(noise_density, mean_noise_span_length)
    orig_length = tf.convert_to_tensor(length, tf.int32)
    length = tf.maximum(orig_length, 2)
    num_noise = tf.cast(tf.round(tf.cast(length, tf.float64) * noise_density), tf.int32)
    num_noise = tf.clip_by_value(num_noise, 1, length - 1)
    num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float64) / mean_noise_span_length), tf.int32)
    num_nonnoise = length - num_noise
    num_spans = tf.minimum(tf.maximum(num_spans, 1), num_nonnoise)
    seeds = tf.random.experimental.stateless_split(tf.convert_to_tensor(seed), 2)
    noise_lengths = _random_segmentation(num_noise, num_spans, seeds[0])
    nonnoise_lengths = _random_segmentation(num_nonnoise, num_spans, seeds[1])
    interleaved = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [-1])
    span_starts = tf.cumsum(interleaved)[:-1]  # [2 * num_spans - 1]
    start_indicator = tf.math.unsorted_segment_sum(tf.ones_like(span_starts), span_starts, length)
    span_number = tf.cumsum(start_indicator)  # [length]: 0 on the first (non-noise) span.
    return tf.equal(span_number % 2, 1)[:orig_length]


def _replace_spans(tokens: tf.Tensor, mask: tf.Tensor, vocab_size: int) -> tf.Tensor:
    """Each run of masked tokens -> one sentinel (vocab_size - 1, - 2, ... in order)."""
    previous = tf.pad(mask[:-1], [[1, 0]])
    first = mask & ~previous
    later = mask & previous
    sentinel = vocab_size - tf.cumsum(tf.cast(first, tokens.dtype))
    tokens = tf.where(first, sentinel, tokens)
    return tf.boolean_mask(tokens, ~later)


def span_corruption(
    tokens: Any,
    seed: Any,
    *,
    vocab_size: int,
    eos_id: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """(inputs, targets) of a 1-D int32 chunk (module docstring); eos ends both.

    `vocab_size` is the model's (sentinels are its top ids); `seed` a [2] int tensor.
    """
    tokens = tf.convert_to_tensor(tokens, tf.int32)
    mask = random_spans_noise_mask(tf.size(tokens), seed, noise_density, mean_noise_span_length)
    eos = tf.constant([eos_id], tf.int32)
    inputs = tf.concat([_replace_spans(tokens, mask, vocab_size), eos], axis=0)
    targets = tf.concat([_replace_spans(tokens, ~mask, vocab_size), eos], axis=0)
    return inputs, targets


def corrupt_dataset(
    ds: tf.data.Dataset,
    *,
    seed: int,
    vocab_size: int,
    eos_id: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> tf.data.Dataset:
    """1-D int32 token chunks -> {'inputs', 'targets'}; element i uses seed (seed, i).

    i counts elements from the start of `ds`: put it after `repeat()` so every epoch draws anew.
    """
    _check_rates(noise_density, mean_noise_span_length)

    def corrupt(index: tf.Tensor, tokens: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs, targets = span_corruption(
            tokens,
            mlm.example_seed(seed, index),
            vocab_size=vocab_size,
            eos_id=eos_id,
            noise_density=noise_density,
            mean_noise_span_length=mean_noise_span_length,
        )
        return {"inputs": inputs, "targets": targets}

    return ds.enumerate().map(corrupt, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def reconstruct(
    inputs: Sequence[int], targets: Sequence[int], *, tokenizer_vocab_size: int, eos_id: int
) -> list[int]:
    """The original tokens of a corrupted pair: each sentinel (an id >= tokenizer_vocab_size) of
    `inputs` replaced by the tokens after it in `targets`; eos and anything after it dropped."""

    def until_eos(ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        return ids[: ids.index(eos_id)] if eos_id in ids else ids

    spans: dict[int, list[int]] = {}
    current: list[int] = []  # Tokens before the first sentinel (none in a well-formed target).
    for token in until_eos(targets):
        if token >= tokenizer_vocab_size:
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    out: list[int] = []
    for token in until_eos(inputs):
        out.extend(spans.get(token, []) if token >= tokenizer_vocab_size else [token])
    return out
