"""The output layer's fused cross-entropy, in both forms (XLA:CPU's and the accelerators'
blockwise one), equals the plain one (optax + argmax), gradients included; the accelerator form
keeps no [tokens, vocab] array for the backward pass."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import ad_checkpoint

from ptjax import backend
from ptjax.tasks import losses

FORMS = [backend.CPU, backend.XLA]


def output_cross_entropy(hidden, output, targets, forms=backend.CPU):
    with backend.forms(forms):
        return losses.output_cross_entropy(hidden, output, targets)


def _plain(hidden, embedding, targets, weights):
    logits = (hidden @ embedding.T).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(loss * weights), jnp.argmax(logits, axis=-1) == targets


def _fused(hidden, embedding, targets, weights, forms):
    loss, correct = output_cross_entropy(hidden, embedding, targets, forms)
    return jnp.sum(loss * weights), correct


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
@pytest.mark.parametrize("forms", FORMS)
@pytest.mark.parametrize(
    "vocab, length",
    [(97, 7), (96, 7), (1000, 7), (97, 300)],  # Argmax chunks of 1, 32, 25; blocks 7, 100 long.
)
def test_same_loss_hits_and_gradients(vocab, length, forms):
    k = jax.random.split(jax.random.PRNGKey(vocab), 4)
    hidden = jax.random.normal(k[0], (2, length, 16))
    embedding = jax.random.normal(k[1], (vocab, 16))
    targets = jax.random.randint(k[2], (2, length), 0, vocab)
    weights = jax.random.uniform(k[3], (2, length))
    targets = targets.at[0, :3].set(jnp.argmax(hidden[0, :3] @ embedding.T, axis=-1))  # Hits.
    grad = jax.value_and_grad
    (want, want_hits), want_grads = grad(_plain, (0, 1), has_aux=True)(
        hidden, embedding, targets, weights
    )
    fused = jax.jit(grad(_fused, (0, 1), has_aux=True), static_argnums=4)
    (got, hits), grads = fused(hidden, embedding, targets, weights, forms)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(hits, want_hits)
    assert int(hits.sum()) >= 3
    for g, w in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("forms", FORMS)
def test_ties_go_to_the_first_index_like_argmax(forms):
    hidden = jnp.ones((1, 3, 4))
    embedding = jnp.zeros((64, 4)).at[40].set(1.0).at[45].set(1.0)  # Equal top logits.
    targets = jnp.array([[40, 45, 0]])
    _, hits = output_cross_entropy(hidden, embedding, targets, forms)
    np.testing.assert_array_equal(hits, [[True, False, False]])


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
@pytest.mark.parametrize("forms", FORMS)
def test_bfloat16_gradients_keep_dtypes(forms):
    hidden = jnp.ones((2, 3, 8), jnp.bfloat16)
    embedding = jnp.ones((32, 8), jnp.float32)
    targets = jnp.zeros((2, 3), jnp.int32)
    g_hidden, g_embedding = jax.grad(
        lambda h, e: jnp.sum(output_cross_entropy(h, e, targets, forms)[0]), (0, 1)
    )(hidden, embedding)
    assert g_hidden.dtype == jnp.bfloat16 and g_embedding.dtype == jnp.float32


@pytest.mark.parametrize("forms, kept", [(backend.CPU, True), (backend.XLA, False)])
def test_only_the_cpu_form_keeps_the_logits_for_the_backward_pass(forms, kept, capsys):
    """Residuals of the loss's VJP: XLA:CPU's form keeps the float32 [tokens, vocab] logits;
    the accelerator form keeps the inputs and one log-sum-exp per token."""
    hidden = jnp.ones((4, 256, 16))
    output = jnp.ones((1000, 16))
    targets = jnp.zeros((4, 256), jnp.int32)
    loss = lambda h, o: jnp.sum(output_cross_entropy(h, o, targets, forms)[0])  # noqa: E731
    ad_checkpoint.print_saved_residuals(loss, hidden, output)
    residuals = capsys.readouterr().out
    sizes = [
        int(np.prod([int(n) for n in shape.split(",")]))
        for shape in re.findall(r"f32\[([\d,]+)\]", residuals)
    ]
    assert (max(sizes) >= 1024 * 1000) == kept, residuals
    if not kept:
        assert "f32[4,256]" in residuals, residuals  # The log-sum-exps.
