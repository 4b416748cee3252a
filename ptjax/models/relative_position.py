"""Relative position buckets (Shaw et al. 2018 as T5 uses them): a key-minus-query distance to
one of `num_buckets` ids, half of them exact distances and half log-spaced up to
`max_distance`; bidirectional buckets split the ids between the two directions. The bias per
(bucket, head) they index is the model's (ptjax.models.t5.RelativePositionBias)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@functools.cache
def bucket_table(num_buckets: int, max_distance: int) -> np.ndarray:
    """Bucket of each distance 0..max_distance-1 (one direction), as HF in float32.

    Half the buckets are exact distances, the other half log-spaced up to max_distance; computed
    once in numpy float32 (like torch), so that distances on a bucket boundary land where they do
    in Hugging Face rather than where XLA's log would round them.
    """
    max_exact = num_buckets // 2
    n = np.arange(max_distance, dtype=np.int64)
    with np.errstate(divide="ignore"):
        ratio = np.log(n.astype(np.float32) / np.float32(max_exact))
        large = max_exact + (
            ratio
            / np.float32(math.log(max_distance / max_exact))
            * np.float32(num_buckets - max_exact)
        )
    large = np.minimum(np.where(n < max_exact, 0, large).astype(np.int64), num_buckets - 1)
    return np.where(n < max_exact, n, large).astype(np.int32)


def relative_position_bucket(
    relative_position: Array,  # [...] int: key position - query position
    *,
    bidirectional: bool,
    num_buckets: int,
    max_distance: int,
) -> Array:
    """Hugging Face's `T5Attention._relative_position_bucket`: ids in [0, num_buckets)."""
    buckets = jnp.zeros_like(relative_position)  # Keys before the query (or all, causal).
    if bidirectional:
        num_buckets //= 2
        buckets = (relative_position > 0).astype(relative_position.dtype) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = jnp.maximum(-relative_position, 0)  # Keys after the query share bucket 0.
    table = jnp.asarray(bucket_table(num_buckets, max_distance))
    near = table[jnp.minimum(distance, max_distance - 1)]
    return buckets + jnp.where(distance >= max_distance, num_buckets - 1, near)
