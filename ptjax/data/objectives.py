"""Training targets built from token streams, as vectorised TensorFlow functions.

Causal LM convention: each document is tokenised as `[eos] + tokens(doc)` (eos doubles as GPT-2's
document separator), the documents form one stream, and the stream is cut into rows of
`seq_len + 1` tokens with stride `seq_len`: consecutive rows share one token, `inputs = row[:-1]`,
`targets = row[1:]`, so every stream token after the first is a target exactly once.
"""

from __future__ import annotations

from ptjax.data.tf_setup import import_tf

tf = import_tf()


def frame_rows(leftover: tf.Tensor, tokens: tf.Tensor, seq_len: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Cuts `leftover + tokens` into full rows; returns (rows, tokens left for the next call).

    rows: [num_rows, seq_len + 1] int32. The new leftover starts with the last token of the last
    row (it is the first input of the next row, not a target again), so nothing is lost or doubled.
    """
    stream = tf.concat([leftover, tokens], axis=0)  # [n]
    n = tf.size(stream)
    num_rows = tf.maximum((n - 1) // seq_len, 0)
    used = num_rows * seq_len + tf.minimum(num_rows, 1)  # Tokens covered by the rows.
    rows = tf.signal.frame(stream[:used], seq_len + 1, seq_len)  # [num_rows, seq_len + 1]
    rows = tf.reshape(rows, [-1, seq_len + 1])
    return rows, stream[num_rows * seq_len :]


def pad_row(tokens: tf.Tensor, seq_len: int, pad_id: int) -> tf.Tensor:
    """The final partial row of a stream: [1, seq_len + 1] if it holds a target, else [0, ...]."""
    size = tf.size(tokens)  # <= seq_len for a leftover of frame_rows.
    row = tf.pad(tokens, [[0, seq_len + 1 - size]], constant_values=pad_id)  # [seq_len + 1]
    keep = tf.cast(size > 1, tf.int32)
    return row[None, :][:keep]


def pack_rows(
    chunks: tf.data.Dataset, seq_len: int, *, pad_id: int = 0, flush: bool = False
) -> tf.data.Dataset:
    """Packs a dataset of 1-D int32 token chunks into a dataset of rows [seq_len + 1].

    Leftover tokens are carried between chunks by `Dataset.scan`, so the packing state is part of
    the tf.data iterator (and of its checkpoints). With `flush`, the tokens left at the end of a
    finite stream form one last row padded with `pad_id`.
    """
    flagged = chunks.map(lambda tokens: (tokens, False))
    if flush:
        flagged = flagged.concatenate(tf.data.Dataset.from_tensors((tf.zeros([0], tf.int32), True)))

    def step(leftover, element):
        tokens, final = element
        rows, leftover = frame_rows(leftover, tokens, seq_len)
        last = pad_row(leftover, seq_len, pad_id)[: tf.cast(final, tf.int32)]
        rows = tf.concat([rows, last], axis=0)  # [num_rows (+1 at the end), seq_len + 1]
        leftover = leftover[: tf.size(leftover) * (1 - tf.cast(final, tf.int32))]
        return leftover, rows

    packed = flagged.scan(tf.zeros([0], tf.int32), step)
    return packed.unbatch()


def lm_features(
    rows: tf.Tensor, *, eos_id: int, pad_id: int = 0, bos_id: int | None = None
) -> dict[str, tf.Tensor]:
    """Causal-LM features of rows [..., seq_len + 1]; every output is [..., seq_len].

    inputs/targets: int32 token ids; weights: float32, 1 where the target is a real token.
    segment_ids: int32, 1 at the start of each row, +1 at every input holding eos (a new
    document); positions: int32, restart at 0 at each segment start. Padding (pad_id, which
    SentencePiece never emits) gets weight 0, segment id 0 and position 0. `bos_id`: documents
    are framed [bos] text [eos] (Llama's): segments start at bos instead, and a bos target (the
    next document's start, after an eos) has weight 0.
    """
    start_id = eos_id if bos_id is None else bos_id
    rows = tf.convert_to_tensor(rows, tf.int32)
    batch_shape = tf.shape(rows)[:-1]
    seq_len = rows.shape[-1] - 1
    flat = tf.reshape(rows, [-1, seq_len + 1])  # [r, seq_len + 1]
    inputs, targets = flat[:, :-1], flat[:, 1:]  # [r, seq_len]
    num_rows = tf.shape(flat)[0]
    index = tf.broadcast_to(tf.range(seq_len)[None, :], tf.shape(inputs))  # [r, seq_len]
    starts = tf.logical_or(tf.equal(inputs, start_id), tf.equal(index, 0))
    segment_ids = tf.cumsum(tf.cast(starts, tf.int32), axis=1)  # [r, seq_len], from 1
    # Each (row, segment) pair gets a unique id; its first index is where positions restart.
    unique = segment_ids + tf.range(num_rows)[:, None] * (seq_len + 1)
    first = tf.math.unsorted_segment_min(index, unique, num_rows * (seq_len + 1))
    positions = index - tf.gather(first, unique)
    real_input = tf.cast(tf.not_equal(inputs, pad_id), tf.int32)
    features = {
        "inputs": inputs,
        "targets": targets,
        "segment_ids": segment_ids * real_input,
        "positions": positions * real_input,
        "weights": tf.cast(
            tf.logical_and(tf.not_equal(targets, pad_id), tf.not_equal(targets, start_id))
            if bos_id is not None
            else tf.not_equal(targets, pad_id),
            tf.float32,
        ),
    }
    out_shape = tf.concat([batch_shape, [seq_len]], axis=0)
    return {key: tf.reshape(value, out_shape) for key, value in features.items()}
