"""GPT model: shapes, parameter counts, causal and segment masking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptjax.models import gpt, layers


def _tiny(**kw):
    params = dict(
        vocab_size=97, max_len=32, num_layers=2, num_heads=4, d_model=32, d_ff=64, dropout_rate=0.1
    )
    params.update(kw)
    return gpt.GPTConfig(**params)


def _init(cfg, length=16):
    model = gpt.GPT(cfg)
    x = jnp.zeros((2, length), jnp.int32)
    return model, model.init(jax.random.PRNGKey(0), x)["params"]


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_logits_shape_and_dtype():
    model, params = _init(_tiny())
    x = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, 97)
    logits = model.apply({"params": params}, x)
    assert logits.shape == (2, 16, 97)
    assert logits.dtype == jnp.float32


@pytest.mark.parametrize(
    "size,expected",
    [
        ("small", 124_439_808),
        ("medium", 354_823_168),
        ("large", 774_030_080),
        ("xl", 1_557_611_200),
    ],
)
def test_gpt2_parameter_counts(size, expected):
    """GPT-2's published sizes (vocab 50257, context 1024, tied embeddings)."""
    cfg = gpt.GPTConfig(**gpt.SIZES[size])
    shapes = jax.eval_shape(
        lambda: gpt.GPT(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
    )
    assert _count(shapes["params"]) == expected


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_causal_no_token_sees_the_future():
    model, params = _init(_tiny())
    x = jax.random.randint(jax.random.PRNGKey(1), (1, 16), 0, 97)
    base = model.apply({"params": params}, x)
    changed = model.apply({"params": params}, x.at[:, 9:].set((x[:, 9:] + 5) % 97))
    np.testing.assert_allclose(base[:, :9], changed[:, :9], atol=1e-6)
    assert not np.allclose(base[:, 9:], changed[:, 9:])


def test_segments_never_see_another_document():
    """Two packed documents: each gives the same logits as when run alone."""
    model, params = _init(_tiny())
    a = jax.random.randint(jax.random.PRNGKey(2), (1, 6), 0, 97)
    b = jax.random.randint(jax.random.PRNGKey(3), (1, 10), 0, 97)
    packed = jnp.concatenate([a, b], axis=1)
    segments = jnp.array([[1] * 6 + [2] * 10])
    positions = jnp.array([list(range(6)) + list(range(10))])
    out = model.apply({"params": params}, packed, positions, segments)
    alone_a = model.apply({"params": params}, a)
    alone_b = model.apply({"params": params}, b)
    np.testing.assert_allclose(out[:, :6], alone_a, atol=1e-5)
    np.testing.assert_allclose(out[:, 6:], alone_b, atol=1e-5)


def test_dropout_is_an_apply_time_switch():
    model, params = _init(_tiny())
    x = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, 97)
    eval_a = model.apply({"params": params}, x)
    eval_b = model.apply({"params": params}, x, deterministic=True)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a = model.apply(
        {"params": params}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(5)}
    )
    train_b = model.apply(
        {"params": params}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(6)}
    )
    assert not np.allclose(train_a, train_b)
    assert not np.allclose(train_a, eval_a)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_drops_at_its_rate_and_keeps_the_mean(rate):
    shape = (3, 501, 67)  # An odd number of entries: the last 16-bit draw is cut off.
    x = jnp.ones(shape)
    dropout = layers.Dropout(rate)
    y = dropout.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
    assert y.shape == shape
    kept = np.asarray(y) != 0
    n = kept.size
    assert abs(kept.mean() - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / n)  # 4 sigma
    np.testing.assert_allclose(np.unique(np.asarray(y)[kept]), 1 / (1 - rate), rtol=1e-4)
    assert abs(float(y.mean()) - 1.0) < 4 * np.sqrt(rate / (1 - rate) / n)
    again = dropout.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
    np.testing.assert_array_equal(y, again)  # Reproducible from the key.
    other = dropout.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
    assert not np.array_equal(other, y)  # Another key, another mask.
    np.testing.assert_array_equal(dropout.apply({}, x, deterministic=True), x)


def test_threefry_matches_the_known_answers_and_jax_keys():
    # Random123's known-answer vectors for Threefry-2x32 with 20 rounds.
    cases = [
        ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
        ((0xFFFFFFFF,) * 2, (0xFFFFFFFF,) * 2, (0x1CB996FC, 0xBB002BE7)),
        ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
    ]
    for key, count, want in cases:
        u = [jnp.asarray([v], jnp.uint32) for v in (*key, *count)]
        got = layers.threefry2x32((u[0][0], u[1][0]), (u[2], u[3]))
        assert [int(g[0]) for g in got] == list(want)
    legacy = layers.random_halves(jax.random.PRNGKey(3), (3, 5))
    np.testing.assert_array_equal(legacy, layers.random_halves(jax.random.key(3), (3, 5)))
    assert legacy.dtype == jnp.uint16
    other = layers.random_halves(jax.random.key(3, impl="rbg"), (3, 5))  # Its own bits.
    assert other.shape == (3, 5)


def test_tied_output_embedding():
    _, params = _init(_tiny())
    assert "wte" in params and not any("head" in k for k in params)


def test_attention_masks():
    causal = layers.causal_mask(4)[0, 0]
    np.testing.assert_array_equal(causal, np.tril(np.ones((4, 4), bool)))
    seg = jnp.array([[1, 1, 2, 2]])
    mask = layers.segment_mask(seg, seg)[0, 0]
    assert bool(mask[0, 1]) and not bool(mask[1, 2]) and bool(mask[3, 2])


def test_fully_masked_rows_are_finite():
    q = jnp.ones((1, 2, 1, 4))
    out = layers.dot_product_attention(q, q, q, jnp.zeros((1, 1, 2, 2), bool))
    assert np.all(np.isfinite(out))


def test_flops_per_token_counts_matmuls():
    cfg = gpt.GPTConfig(**gpt.SIZES["small"])
    non_embedding = 12 * (4 * 768 * 768 + 2 * 768 * 3072)
    expected = 6 * (non_embedding + 50257 * 768) + 6 * 12 * 1024 * 768
    assert gpt.flops_per_token(cfg, 1024) == expected
