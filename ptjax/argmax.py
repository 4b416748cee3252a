"""argmax over a long last axis (a vocabulary) in passes XLA:CPU runs at memory speed.

jnp.argmax lowers to a (value, index) reduction that XLA:CPU runs at a fraction of memory
speed; over [tokens, 32000] logits it cost more than the loss around it. Here the maximum is
taken per chunk of `chunk_size` entries (XLA:CPU reduces long rows in such windows anyway, so
the chunk maxima cost no extra pass), and the first maximal index is found in the first chunk
holding the maximum: one pass over the row and two over [rows, n // chunk] or less.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def chunk_size(n: int) -> int:
    """The largest divisor of `n` up to 32: rows of n entries are reduced in such chunks."""
    return max(c for c in range(1, 33) if n % c == 0)


def chunk_maxima(x: Array) -> tuple[Array, Array]:
    """(x as [..., n // chunk, chunk], its chunk maxima [..., n // chunk])."""
    n = x.shape[-1]
    chunk = chunk_size(n)
    chunks = x.reshape(x.shape[:-1] + (n // chunk, chunk))
    # The barrier keeps XLA from recomputing the maxima inside the index searches after it.
    return chunks, jax.lax.optimization_barrier(jnp.max(chunks, axis=-1))


def _first(matches: Array) -> Array:
    """The first True along the last axis; its length where there is none."""
    n = matches.shape[-1]
    index = jax.lax.broadcasted_iota(jnp.int32, matches.shape, matches.ndim - 1)
    return jnp.min(jnp.where(matches, index, n), axis=-1)


def first_argmax(chunks: Array, chunk_top: Array, top: Array) -> Array:
    """The first index of the maximum `top` [..., 1] in a row given as `chunk_maxima` gives it.

    Equal to jnp.argmax where the row holds no NaN; a row whose maximum is NaN matches
    nowhere and gives an index in range (the last), never one past the end.
    """
    n_chunks, chunk = chunks.shape[-2:]
    first_chunk = jnp.minimum(_first(chunk_top == top), n_chunks - 1)  # [...]
    in_chunk = jnp.take_along_axis(chunks, first_chunk[..., None, None], axis=-2)[..., 0, :]
    index = first_chunk * chunk + _first(in_chunk == top)
    return jnp.minimum(index, n_chunks * chunk - 1)


def argmax(x: Array) -> Array:
    """jnp.argmax(x, axis=-1) (ties to the first index), as described above."""
    chunks, chunk_top = chunk_maxima(x)
    return first_argmax(chunks, chunk_top, jnp.max(chunk_top, axis=-1, keepdims=True))
