"""The fused tied-embedding cross-entropy equals the plain one (optax + argmax) and its grads."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ptjax.tasks.losses import tied_softmax_cross_entropy


def _plain(hidden, embedding, targets, weights):
    logits = (hidden @ embedding.T).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(loss * weights), jnp.argmax(logits, axis=-1) == targets


def _fused(hidden, embedding, targets, weights):
    loss, correct = tied_softmax_cross_entropy(hidden, embedding, targets)
    return jnp.sum(loss * weights), correct


@pytest.mark.parametrize("vocab", [97, 96, 1000])  # Argmax chunks of 1, 32 and 25 logits.
def test_same_loss_hits_and_gradients(vocab):
    k = jax.random.split(jax.random.PRNGKey(vocab), 4)
    hidden = jax.random.normal(k[0], (2, 7, 16))
    embedding = jax.random.normal(k[1], (vocab, 16))
    targets = jax.random.randint(k[2], (2, 7), 0, vocab)
    weights = jax.random.uniform(k[3], (2, 7))
    targets = targets.at[0, :3].set(jnp.argmax(hidden[0, :3] @ embedding.T, axis=-1))  # Hits.
    grad = jax.value_and_grad
    (want, want_hits), want_grads = grad(_plain, (0, 1), has_aux=True)(
        hidden, embedding, targets, weights
    )
    (got, hits), grads = jax.jit(grad(_fused, (0, 1), has_aux=True))(
        hidden, embedding, targets, weights
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(hits, want_hits)
    assert int(hits.sum()) >= 3
    for g, w in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_ties_go_to_the_first_index_like_argmax():
    hidden = jnp.ones((1, 3, 4))
    embedding = jnp.zeros((64, 4)).at[40].set(1.0).at[45].set(1.0)  # Equal top logits.
    targets = jnp.array([[40, 45, 0]])
    _, hits = tied_softmax_cross_entropy(hidden, embedding, targets)
    np.testing.assert_array_equal(hits, [[True, False, False]])


def test_bfloat16_gradients_keep_dtypes():
    hidden = jnp.ones((2, 3, 8), jnp.bfloat16)
    embedding = jnp.ones((32, 8), jnp.float32)
    targets = jnp.zeros((2, 3), jnp.int32)
    g_hidden, g_embedding = jax.grad(
        lambda h, e: jnp.sum(tied_softmax_cross_entropy(h, e, targets)[0]), (0, 1)
    )(hidden, embedding)
    assert g_hidden.dtype == jnp.bfloat16 and g_embedding.dtype == jnp.float32
