"""Optimizer factory: weight-decay mask, schedule, clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ptjax.config import base_config
from ptjax.models import gpt
from ptjax.train import optim


@pytest.fixture(scope="module")
def params():
    cfg = gpt.GPTConfig(vocab_size=50, max_len=16, num_layers=1, num_heads=2, d_model=8, d_ff=16)
    return gpt.GPT(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_decay_mask_only_matrices(params):
    mask = optim.decay_mask(params, decay_embeddings=False)
    assert mask["h_0"]["attn"]["query"]["kernel"] is True
    assert mask["h_0"]["mlp"]["wi"]["kernel"] is True
    assert mask["h_0"]["attn"]["query"]["bias"] is False
    assert mask["h_0"]["ln_1"]["scale"] is False
    assert mask["h_0"]["ln_1"]["bias"] is False
    assert mask["ln_f"]["scale"] is False
    assert mask["wte"]["embedding"] is False
    assert mask["wpe"]["embedding"] is False
    with_emb = optim.decay_mask(params, decay_embeddings=True)
    assert with_emb["wte"]["embedding"] is True


def test_decay_counts_add_up(params):
    decayed, plain = optim.count_decayed(params, optim.decay_mask(params, False))
    total = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    assert decayed + plain == total
    # Kernels: q, k, v (8x2x4 each), out (2x4x8), wi (8x16), wo (16x8).
    assert decayed == 4 * 64 + 128 + 128


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_decay_leaves_masked_parameters_alone(params):
    """With zero gradients only decayed leaves move (AdamW's decoupled decay)."""
    c = base_config().optimizer
    c.weight_decay, c.warmup_steps, c.schedule = 0.5, 0, "constant"
    tx, _ = optim.make_optimizer(c, 10, params)
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    mask = optim.decay_mask(params, False)
    for u, p, m in zip(
        jax.tree.leaves(updates), jax.tree.leaves(params), jax.tree.leaves(mask), strict=True
    ):
        if m:
            np.testing.assert_allclose(u, -c.learning_rate * 0.5 * p, rtol=1e-6)
        else:
            np.testing.assert_array_equal(u, 0)


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_schedule_warmup_then_decay(kind):
    c = base_config().optimizer
    c.learning_rate, c.warmup_steps, c.schedule, c.end_learning_rate_fraction = 1.0, 10, kind, 0.1
    lr = optim.learning_rate_schedule(c, 110)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(0.5)
    assert float(lr(10)) == pytest.approx(1.0)
    end = {"cosine": 0.1, "linear": 0.1, "constant": 1.0}[kind]
    assert float(lr(110)) == pytest.approx(end, abs=1e-6)
    assert float(lr(60)) <= 1.0


def test_global_norm_clipping(params):
    c = base_config().optimizer
    c.grad_clip_norm, c.warmup_steps, c.schedule, c.weight_decay = 1.0, 0, "constant", 0.0
    c.learning_rate = 1.0
    tx, _ = optim.make_optimizer(c, 10, params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 100.0), params)
    clipped, _ = optax.clip_by_global_norm(1.0).update(grads, None)
    assert float(optax.global_norm(clipped)) == pytest.approx(1.0, rel=1e-5)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(updates))
