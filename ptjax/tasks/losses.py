"""The output layer's softmax cross-entropy, fused with its projection, in two forms: one for
XLA:CPU, one for accelerators (ptjax.backend decides per step)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ptjax import argmax, backend
from ptjax.models import mixed_matmul

Array = jax.Array

# Positions per block of the accelerator form: its float32 logits are [batch, BLOCK, vocab] at
# a time (GPT-2 small, 8 rows of a device's batch: 206 MB, against 1.6 GB for all 1024).
BLOCK = 128


def output_cross_entropy(
    hidden: Array,  # [..., d_model]: the final hidden states
    output: Array,  # [vocab, d_model]: the output projection (tied embedding, or a head)
    targets: Array,  # [...] int
) -> tuple[Array, Array]:
    """Per-token (loss, argmax == target) of the logits hidden @ output.T, in float32: equal, up
    to float round-off, to optax.softmax_cross_entropy_with_integer_labels and jnp.argmax (first
    maximal index) on those logits.

    On CPU forms (ptjax.backend) the logits are made once and kept for the backward pass
    (`_cpu_fused`); on accelerators they are never kept: blocks of BLOCK positions are
    projected, reduced and dropped, and recomputed block by block for the gradient
    (`blockwise_cross_entropy`).
    """
    if backend.cpu_forms():
        return _cpu_fused(hidden, output, targets)
    return blockwise_cross_entropy(hidden, output, targets)


@jax.custom_vjp
def _cpu_fused(hidden: Array, embedding: Array, targets: Array) -> tuple[Array, Array]:
    """XLA:CPU's form: the [tokens, vocab] logits are made once and kept for the backward pass,
    the target logit is gathered, the argmax needs no index-carrying pass over all logits, and
    the gradient is never transposed. On the 'bench' GPT (32k vocabulary) this took a tenth off
    the CPU train step."""
    return _forward(hidden, embedding, targets)[0]


def _forward(hidden: Array, embedding: Array, targets: Array):
    x = hidden.reshape(-1, hidden.shape[-1])  # [tokens, d_model]
    labels = targets.reshape(-1, 1)  # [tokens, 1]
    logits = mixed_matmul.times_transposed(x, embedding)  # [tokens, vocab] float32
    chunks, chunk_top = argmax.chunk_maxima(logits)  # [tokens, vocab // chunk (, chunk)]
    top = jnp.max(chunk_top, axis=-1, keepdims=True)  # [tokens, 1]
    sum_exp = jnp.sum(jnp.exp(logits - top), axis=-1, keepdims=True)
    target_logit = jnp.take_along_axis(logits, labels, axis=-1)  # [tokens, 1]
    loss = jnp.log(sum_exp) - (target_logit - top)  # optax's order of operations
    # jnp.argmax's first maximal index without a slow index-carrying pass over all logits.
    correct = argmax.first_argmax(chunks, chunk_top, top) == labels[:, 0]
    outputs = (loss.reshape(targets.shape), correct.reshape(targets.shape))
    return outputs, (hidden, embedding, labels, logits, top, sum_exp)


def _backward(residuals, cotangents):
    hidden, embedding, labels, logits, top, sum_exp = residuals
    d_loss = cotangents[0].reshape(-1, 1).astype(jnp.float32)  # [tokens, 1]
    vocab = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1)
    probs = jnp.exp(logits - top) / sum_exp
    d_logits = ((probs - (vocab == labels)) * d_loss).astype(hidden.dtype)  # [tokens, vocab]
    x = hidden.reshape(-1, hidden.shape[-1])
    # Both products accumulate in float32 (a bf16 one returning bf16 is slow on XLA:CPU), and the
    # embedding's contracts over tokens with d_logits never transposed (mixed_matmul).
    d_x = jnp.dot(d_logits, embedding.astype(hidden.dtype), preferred_element_type=jnp.float32)
    d_embedding = mixed_matmul.over_leading(x, d_logits).T  # [vocab, d_model]
    return d_x.astype(hidden.dtype).reshape(hidden.shape), d_embedding.astype(embedding.dtype), None


_cpu_fused.defvjp(_forward, _backward)


def _blocks(x: Array, length: int) -> tuple[Array, int]:
    """[batch, length, ...] -> ([length // block, batch, block, ...], block): scanned over the
    positions, so a batch split over devices stays split in every block."""
    block = max(b for b in range(1, min(BLOCK, length) + 1) if length % b == 0)
    x = x.reshape(x.shape[0], length // block, block, *x.shape[2:])
    return jnp.moveaxis(x, 1, 0), block


def _unblock(x: Array) -> Array:
    """Inverse of `_blocks`: [n, batch, block, ...] -> [batch, n * block, ...]."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def _block_logits(x: Array, output: Array) -> Array:
    """[batch, block, d] @ output[vocab, d].T -> [batch, block, vocab] in float32."""
    return jnp.einsum("bld,vd->blv", x, output.astype(x.dtype), preferred_element_type=jnp.float32)


@jax.custom_vjp
def blockwise_cross_entropy(hidden: Array, output: Array, targets: Array) -> tuple[Array, Array]:
    """`output_cross_entropy` without a [tokens, vocab] residual: the forward pass keeps each
    token's log-sum-exp, and the backward pass recomputes each block's logits from the hidden
    states (one more projection: 8 instead of 6 FLOPs per parameter and token for this layer)."""
    return _blockwise_forward(hidden, output, targets)[0]


def _as_rows(hidden: Array, targets: Array) -> tuple[Array, Array]:
    """[..., length, d] and [..., length] as [rows, length, d] and [rows, length]."""
    length = targets.shape[-1] if targets.ndim else 1
    return hidden.reshape(-1, length, hidden.shape[-1]), targets.reshape(-1, length)


def _blockwise_forward(hidden: Array, output: Array, targets: Array):
    x, labels = _as_rows(hidden, targets)
    xs, _ = _blocks(x, x.shape[1])
    ls, _ = _blocks(labels, x.shape[1])

    def one(block: tuple[Array, Array]) -> tuple[Array, Array, Array]:
        xb, lb = block
        logits = _block_logits(xb, output)  # [batch, block, vocab]
        lse = jax.nn.logsumexp(logits, axis=-1)
        target = jnp.take_along_axis(logits, lb[..., None], axis=-1)[..., 0]
        return lse - target, jnp.argmax(logits, axis=-1) == lb, lse

    loss, correct, lse = jax.lax.map(one, (xs, ls))
    outputs = (_unblock(loss).reshape(targets.shape), _unblock(correct).reshape(targets.shape))
    return outputs, (hidden, output, targets, _unblock(lse))


def _blockwise_backward(residuals, cotangents):
    hidden, output, targets, lse = residuals
    x, labels = _as_rows(hidden, targets)
    d_loss = cotangents[0].reshape(labels.shape).astype(jnp.float32)
    blocks = tuple(_blocks(a, x.shape[1])[0] for a in (x, labels, lse, d_loss))
    weights = output.astype(x.dtype)

    def one(d_output: Array, block: tuple[Array, ...]) -> tuple[Array, Array]:
        xb, lb, lse_b, g = block
        logits = _block_logits(xb, output)
        vocab = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2)
        d_logits = (jnp.exp(logits - lse_b[..., None]) - (vocab == lb[..., None])) * g[..., None]
        d_logits = d_logits.astype(x.dtype)
        d_x = jnp.einsum("blv,vd->bld", d_logits, weights, preferred_element_type=jnp.float32)
        d_output = d_output + jnp.einsum(
            "blv,bld->vd", d_logits, xb, preferred_element_type=jnp.float32
        )
        return d_output, d_x.astype(x.dtype)

    zeros = jnp.zeros(output.shape, jnp.float32)
    d_output, d_x = jax.lax.scan(one, zeros, blocks)
    d_hidden = _unblock(d_x).reshape(hidden.shape)
    return d_hidden, d_output.astype(output.dtype), None


blockwise_cross_entropy.defvjp(_blockwise_forward, _blockwise_backward)
