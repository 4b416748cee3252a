"""BERT's masked-LM objective as TensorFlow ops: dynamic masking inside tf.data, by stateless RNG.

Special ids. A BERT tokenizer is a ptjax SentencePiece model (pad 0, eos 1, unk 2, bos 3) trained
with `train_tokenizer(..., control_symbols=BERT_CONTROL_SYMBOLS)`, which puts [CLS], [SEP] and
[MASK] at ids 4, 5 and 6. They are control symbols, not user-defined ones, so that `encode` never
produces them from text (a document containing the characters "[MASK]" is tokenised as text);
pad 0 doubles as BERT's [PAD]. `bert_special_ids` reads and checks the ids from a tokenizer.

Masking (`mask_tokens`) follows the BERT paper: round(15%) of each row's maskable tokens (never
special ids or padding) are selected, at least one when a row has any; a selected token becomes
[MASK] with probability 0.8, a random non-special token with 0.1, and stays as it is with 0.1. The
loss weight is 1 exactly on the selected positions. With `whole_word_starts`, whole words are
selected in random order until at least that many tokens are covered. Every random draw is a
stateless op of a [2] int seed, so masks are reproducible, and `mask_dataset` derives each
example's seed from (seed, element index), so a restored tf.data iterator masks identically.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from ptjax.data import tokenizer as tokenizer_lib
from ptjax.data.tf_setup import import_tf

tf = import_tf()

BERT_CONTROL_SYMBOLS = ("[CLS]", "[SEP]", "[MASK]")  # = ptjax.models.bert.CONTROL_SYMBOLS
WORD_START = "\u2581"  # SentencePiece's "▁": a piece starting with it begins a word.


@dataclasses.dataclass(frozen=True)
class BertSpecialIds:
    pad: int
    cls: int
    sep: int
    mask: int
    unk: int
    eos: int
    bos: int

    @property
    def all(self) -> tuple[int, ...]:
        """Every special id: never masked, never drawn as a random replacement."""
        return tuple(
            sorted({self.pad, self.cls, self.sep, self.mask, self.unk, self.eos, self.bos})
        )


def bert_special_ids(tokenizer: tokenizer_lib.Tokenizer) -> BertSpecialIds:
    """The ids of [CLS]/[SEP]/[MASK] in a tokenizer; raises if it was trained without them."""
    ids = [tokenizer.piece_to_id(piece) for piece in BERT_CONTROL_SYMBOLS]
    missing = [p for p, i in zip(BERT_CONTROL_SYMBOLS, ids, strict=True) if i == tokenizer.unk_id]
    if missing:
        raise ValueError(
            f"Tokenizer {tokenizer.path!r} has no pieces {missing}; train a BERT tokenizer with "
            f"train_tokenizer(..., control_symbols={BERT_CONTROL_SYMBOLS})."
        )
    cls_id, sep_id, mask_id = ids
    return BertSpecialIds(
        pad=tokenizer.pad_id,
        cls=cls_id,
        sep=sep_id,
        mask=mask_id,
        unk=tokenizer.unk_id,
        eos=tokenizer.eos_id,
        bos=tokenizer.bos_id,
    )


def word_start_table(tokenizer: tokenizer_lib.Tokenizer) -> np.ndarray:
    """[vocab] bool: True for pieces that begin a word ('▁...'); gather it with token ids."""
    return np.array(
        [tokenizer.id_to_piece(i).startswith(WORD_START) for i in range(tokenizer.vocab_size)]
    )


def _check_rates(mask_rate: float, random_rate: float, keep_rate: float) -> None:
    if not 0.0 <= mask_rate <= 1.0:
        raise ValueError(f"mask_rate={mask_rate} must be in [0, 1].")
    if random_rate < 0 or keep_rate < 0 or random_rate + keep_rate > 1.0:
        raise ValueError(
            f"random_rate={random_rate} and keep_rate={keep_rate} must be >= 0 with sum <= 1."
        )


def mask_tokens(
    ids: Any,
    *,
    seed: Any,
    vocab_size: int,
    mask_id: int,
    special_ids: Sequence[int],
    pad_id: int = tokenizer_lib.PAD_ID,
    mask_rate: float = 0.15,
    random_rate: float = 0.1,
    keep_rate: float = 0.1,
    whole_word_starts: Any = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """BERT masking of `ids` [..., length]; returns (inputs, targets, weights), each [..., length].

    `seed`: [2] int tensor for the stateless RNG (same seed and ids, same masks). `special_ids`,
    `pad_id` and `mask_id` are never selected nor drawn as random replacements. `inputs` are the
    masked ids, `targets` the original ids, `weights` float32 1.0 on the selected positions.
    `whole_word_starts` [..., length] bool marks tokens that begin a word (e.g. gathered from
    `word_start_table`); a maskable token right after a non-maskable one also begins a word.
    """
    _check_rates(mask_rate, random_rate, keep_rate)
    ids = tf.convert_to_tensor(ids)
    length = tf.shape(ids)[-1]
    flat = tf.reshape(ids, [-1, length])  # [rows, length]
    rows = tf.shape(flat)[0]
    never = sorted({*map(int, special_ids), int(pad_id), int(mask_id)})
    allowed = np.setdiff1d(np.arange(vocab_size), never)  # Random replacements.
    if allowed.size == 0:
        raise ValueError(f"vocab_size={vocab_size} leaves no non-special id to draw.")
    seeds = tf.random.experimental.stateless_split(tf.convert_to_tensor(seed), 3)

    never_t = tf.constant(never, flat.dtype)
    maskable = tf.reduce_all(tf.not_equal(flat[..., None], never_t), axis=-1)  # [rows, length]
    if whole_word_starts is None:
        starts = maskable
    else:
        word_starts = tf.reshape(tf.cast(whole_word_starts, tf.bool), [-1, length])
        after_unmaskable = tf.logical_not(tf.pad(maskable[:, :-1], [[0, 0], [1, 0]]))
        starts = maskable & (word_starts | after_unmaskable)
    # Word index of each maskable token; the others go to a dummy word `length`.
    word = tf.cumsum(tf.cast(starts, tf.int32), axis=1) - 1  # [rows, length]
    word = tf.where(maskable, word, length)
    segments = word + tf.range(rows)[:, None] * (length + 1)
    word_len = tf.math.unsorted_segment_sum(
        tf.cast(maskable, tf.int32), segments, rows * (length + 1)
    )
    word_len = tf.reshape(word_len, [rows, length + 1])[:, :length]  # [rows, words]

    num_maskable = tf.reduce_sum(tf.cast(maskable, tf.int32), axis=1)  # [rows]
    target = tf.cast(tf.floor(mask_rate * tf.cast(num_maskable, tf.float32) + 0.5), tf.int32)
    target = tf.where(num_maskable > 0, tf.maximum(target, 1), 0)
    if mask_rate == 0.0:
        target = tf.zeros_like(target)
    # Visit words in a random order; take each while fewer than `target` tokens are covered.
    score = tf.random.stateless_uniform([rows, length], seed=seeds[0])
    score = tf.where(word_len > 0, score, 2.0)  # Empty words last.
    order = tf.argsort(score, axis=1, stable=True)  # [rows, words]
    sorted_len = tf.gather(word_len, order, batch_dims=1)
    covered_before = tf.cumsum(sorted_len, axis=1, exclusive=True)
    chosen_sorted = (covered_before < target[:, None]) & (sorted_len > 0)
    chosen = tf.gather(chosen_sorted, tf.argsort(order, axis=1), batch_dims=1)  # [rows, words]
    chosen = tf.pad(chosen, [[0, 0], [0, 1]])  # The dummy word is never chosen.
    selected = tf.gather(chosen, word, batch_dims=1) & maskable  # [rows, length]

    action = tf.random.stateless_uniform([rows, length], seed=seeds[1])
    mask_share = 1.0 - random_rate - keep_rate
    to_mask = selected & (action < mask_share)
    to_random = selected & (action >= mask_share) & (action < mask_share + random_rate)
    draw = tf.random.stateless_uniform(
        [rows, length], seed=seeds[2], maxval=allowed.size, dtype=tf.int32
    )
    random_ids = tf.gather(tf.constant(allowed, flat.dtype), draw)
    inputs = tf.where(to_mask, tf.constant(mask_id, flat.dtype), flat)
    inputs = tf.where(to_random, random_ids, inputs)
    weights = tf.cast(selected, tf.float32)
    shape = tf.shape(ids)
    return tf.reshape(inputs, shape), ids, tf.reshape(weights, shape)


def example_seed(seed: int, index: Any) -> tf.Tensor:
    """The [2] int64 stateless seed of element `index` of a run seeded with `seed`."""
    return tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])


def mask_dataset(
    ds: tf.data.Dataset,
    *,
    seed: int,
    ids_key: str = "ids",
    word_starts: np.ndarray | None = None,
    **mask_kwargs: Any,
) -> tf.data.Dataset:
    """Adds MLM `inputs`, `targets`, `weights` to each dict element of `ds` from `ids_key`.

    Element i is masked with `example_seed(seed, i)`, where i counts elements from the start of
    this dataset: put it after `repeat()` so every epoch draws new masks. `word_starts` (a
    `word_start_table`) turns on whole-word masking; other arguments go to `mask_tokens`.
    """
    table = None if word_starts is None else tf.constant(word_starts, tf.bool)

    def add_masks(index: tf.Tensor, example: dict) -> dict:
        ids = example[ids_key]
        starts = None if table is None else tf.gather(table, ids)
        inputs, targets, weights = mask_tokens(
            ids, seed=example_seed(seed, index), whole_word_starts=starts, **mask_kwargs
        )
        return {**example, "inputs": inputs, "targets": targets, "weights": weights}

    return ds.enumerate().map(add_masks, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
