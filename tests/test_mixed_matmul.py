"""bf16 products with float32 accumulation: the values and gradients of the plain products, and
the shapes (vectors, tiny, odd) that XLA:CPU compiles through other kernels run too."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptjax.models import layers, mixed_matmul

BF16 = jnp.bfloat16
# Shapes (M, K, N): a row or a column vector, under YNNPACK's minimum size, odd, and moderate.
SHAPES = [(1, 16, 24), (24, 16, 1), (3, 5, 7), (37, 19, 53), (256, 64, 160)]


def _normal(key, shape):
    return jax.random.normal(jax.random.PRNGKey(key), shape, jnp.float32).astype(BF16)


def _f32(x):
    return np.asarray(x, np.float32)


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_products_equal_float32_products_of_the_bf16_values(m, k, n):
    x, w, g = _normal(0, (m, k)), _normal(1, (k, n)), _normal(2, (m, n))
    out = jax.jit(mixed_matmul.matmul)(x, w)
    assert out.dtype == BF16
    # One rounding of a float32 accumulation: within bf16's half ulp of the exact product.
    np.testing.assert_allclose(_f32(out), _f32(x) @ _f32(w), rtol=2**-8, atol=1e-6)
    leading = jax.jit(mixed_matmul.over_leading)(x, g)  # x^T g
    assert leading.dtype == BF16 and leading.shape == (k, n)
    np.testing.assert_allclose(_f32(leading), _f32(x).T @ _f32(g), rtol=2**-8, atol=1e-6)
    e = _normal(3, (n, k))
    logits = jax.jit(mixed_matmul.times_transposed)(x, e)  # x e^T, float32 out
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, _f32(x) @ _f32(e).T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m,k,n", SHAPES[1:4])
def test_matmul_gradients_are_the_plain_products(m, k, n):
    x, w, g = _normal(0, (m, k)), _normal(1, (k, n)), _normal(2, (m, n))
    _, pullback = jax.vjp(mixed_matmul.matmul, x, w)
    d_x, d_w = jax.jit(pullback)(g)
    assert d_x.dtype == BF16 and d_w.dtype == BF16
    np.testing.assert_allclose(_f32(d_x), _f32(g) @ _f32(w).T, rtol=2**-8, atol=1e-6)
    np.testing.assert_allclose(_f32(d_w), _f32(x).T @ _f32(g), rtol=2**-8, atol=1e-6)


def test_remat_policies_recompute_it_to_the_same_gradients():
    """Under jax.checkpoint the custom product is recomputed, not saved, by dots_saveable (it is
    not a dot_general primitive to the policy); the gradients are the same either way."""
    layer = layers.Dense(6, dtype=BF16)
    x = _normal(7, (4, 8)).astype(jnp.float32)
    params = layer.init(jax.random.PRNGKey(0), x)

    def loss(p):
        return jnp.sum(jnp.tanh(layer.apply(p, x)).astype(jnp.float32))

    want = jax.grad(loss)(params)
    policy = jax.checkpoint_policies.dots_saveable
    got = jax.jit(jax.grad(jax.checkpoint(loss, policy=policy)))(params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
@pytest.mark.parametrize("batch,m,k,n", [((2, 3), 5, 7, 4), ((4,), 64, 16, 32), ((1, 2), 1, 8, 1)])
def test_batched_products_and_gradients(batch, m, k, n):
    a, b, b_t = _normal(8, (*batch, m, k)), _normal(9, (*batch, k, n)), _normal(10, (*batch, n, k))
    g = _normal(11, (*batch, m, n))
    for fn, rhs, plain in (
        (mixed_matmul.matmul, b, lambda x, y: x @ y),
        (mixed_matmul.matmul_t, b_t, lambda x, y: x @ np.swapaxes(y, -1, -2)),
    ):
        out, pullback = jax.vjp(fn, a, rhs)
        d_a, d_rhs = jax.jit(pullback)(g)
        assert out.dtype == d_a.dtype == d_rhs.dtype == BF16
        want_out, want_pullback = jax.vjp(plain, _f32(a), _f32(rhs))
        want_a, want_rhs = want_pullback(_f32(g))
        np.testing.assert_allclose(_f32(out), want_out, rtol=2**-8, atol=1e-5)
        np.testing.assert_allclose(_f32(d_a), want_a, rtol=2**-8, atol=1e-5)
        np.testing.assert_allclose(_f32(d_rhs), want_rhs, rtol=2**-8, atol=1e-5)


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_bf16_attention_takes_the_heads_first_products_and_matches_float32():
    q, k, v = (_normal(i, (2, 6, 3, 8)) for i in (12, 13, 14))
    mask = jnp.tril(jnp.ones((6, 6), bool))[None, None]

    def attend(q, k, v, dtype):
        out = layers.dot_product_attention(q, k, v, mask, dtype=dtype)
        return jnp.sum(out.astype(jnp.float32) ** 2)

    jaxpr = str(jax.make_jaxpr(jax.grad(attend, (0, 1, 2)), static_argnums=3)(q, k, v, BF16))
    assert jaxpr.count("custom_vjp") >= 2  # Both products, forward and backward.
    got = jax.jit(jax.value_and_grad(attend, (0, 1, 2)), static_argnums=3)(q, k, v, BF16)
    f32 = [_f32(x) for x in (q, k, v)]
    want = jax.value_and_grad(attend, (0, 1, 2))(*f32, jnp.float32)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(_f32(a), b, rtol=3e-2, atol=3e-2)


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
@pytest.mark.parametrize("dtype", [jnp.float32, BF16])
@pytest.mark.parametrize(
    "kwargs", [dict(features=6), dict(features=(2, 4)), dict(features=6, axis=(-2, -1))]
)
def test_ptjax_dense_is_flax_dense_general(kwargs, dtype):
    """Same parameter tree and initial values as flax's DenseGeneral from the same key, the same
    outputs, and the same gradients (the bias's as a product; bf16 within its rounding)."""
    init = dict(kernel_init=nn.initializers.normal(0.5), bias_init=nn.initializers.normal(0.5))
    ours = layers.Dense(**kwargs, **init, dtype=dtype)
    theirs = nn.DenseGeneral(**kwargs, **init, dtype=dtype)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3, 8))
    params = ours.init(jax.random.PRNGKey(0), x)
    want_params = theirs.init(jax.random.PRNGKey(0), x)
    assert jax.tree.structure(params) == jax.tree.structure(want_params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want_params), strict=True):
        np.testing.assert_array_equal(a, b)

    def loss(module):
        return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x).astype(jnp.float32)))

    # bf16 on this CPU takes the float32-accumulating product (a custom_vjp); float32 does not.
    assert mixed_matmul.cpu_bf16(dtype) == (dtype == BF16)
    jaxpr = str(jax.make_jaxpr(jax.grad(loss(ours)))(params, x))
    assert ("name=matmul" in jaxpr) == (dtype == BF16) and "name=add_bias" in jaxpr
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=3e-2, atol=3e-2)
    np.testing.assert_allclose(_f32(ours.apply(params, x)), _f32(theirs.apply(params, x)), **tol)
    got = jax.jit(jax.grad(loss(ours), (0, 1)))(params, x)
    want = jax.grad(loss(theirs), (0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(_f32(a), _f32(b), **tol)
