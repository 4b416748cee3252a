"""bf16 products accumulated and returned in float32, in the forms XLA:CPU runs fastest.

On XLA:CPU (jaxlib 0.10) YNNPACK runs a bf16 x bf16 product that returns float32 on this
machine's AVX512-BF16 at 330-410 GFLOP/s, about twice float32's ~205. A bf16 product that returns
bf16, which is what a plain `x @ w` in bf16 asks for, is not YNNPACK's: XLA computes it through
float32 copies of its operands (110-190 GFLOP/s). YNNPACK also takes only products whose left
operand contracts over its last dimension; a weight gradient contracts over the tokens, the
leading dimension of both operands, and XLA then folds any transpose written before it into the
product and falls back the same way. `over_leading` writes that transpose through a 3-d view, which
XLA materialises instead (about 1 MB for a [2048, 256] bf16 activation), and the product is
YNNPACK's again (310-350 GFLOP/s). All figures: `[2048, 256] x [256, 1024]`-sized products, best
of 5, this 2-core EPYC, in BUILD_NOTES.md.

`dense_dot_general` is the `dot_general` of flax's Dense and DenseGeneral for `model.dtype=
bfloat16` on a CPU: the same numbers as the plain bf16 product (float32 accumulation rounded to
bf16 once), with a backward pass made of the fast forms. Accelerators keep flax's default: their
bf16 products accumulate in float32 already.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def over_leading(a: Array, b: Array) -> Array:
    """a[M, K]^T @ b[M, N] -> [K, N], the product over the leading (token) axis, accumulated in
    float32 and returned in a's dtype.

    The transpose of `a` goes through a [K, 1, M] view, which XLA:CPU writes out rather than
    folding into the product, so the product keeps YNNPACK's fast kernels (module docstring).
    The result is rounded to a's dtype here on purpose: jaxlib 0.10 folds a transpose of a bf16
    product's float32 result into the product, which then fails at run time ("Unsupported
    element type for DotThunk::Execute: BF16 x BF16 = F32"); the rounding keeps them apart.
    """
    m, k = a.shape
    a_t = a.reshape(1, m, k).transpose(2, 0, 1)  # [K, 1, M]
    dims = (((1, 2), (0, 1)), ((), ()))
    product = jax.lax.dot_general(
        a_t, b.reshape(1, m, b.shape[1]), dims, preferred_element_type=jnp.float32
    )
    return product.astype(a.dtype)


def times_transposed(x: Array, w: Array) -> Array:
    """x[M, K] @ w[N, K]^T -> [M, N] in float32: a tied output layer's logits.

    For bf16 operands, w's transpose goes through a [K, 1, N] view that XLA:CPU writes out
    (16 MB for a 32k x 256 embedding): with the transpose folded into the product instead,
    YNNPACK ran the 'bench' GPT's [2048, 256] x [256, 32000] at 184 GFLOP/s, written out at 340.
    float32 operands gain nothing from it (171-196 against 175-184) and take the plain product.
    """
    if x.dtype != jnp.bfloat16 or w.dtype != jnp.bfloat16:
        return jnp.dot(x, w.T, preferred_element_type=jnp.float32)
    n, k = w.shape
    w_t = w.reshape(1, n, k).transpose(2, 0, 1)  # [K, 1, N]
    product = jax.lax.dot_general(
        x, w_t, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )
    return product.reshape(x.shape[0], n)


@jax.custom_vjp
def matmul(x: Array, w: Array) -> Array:
    """x[M, K] @ w[K, N] accumulated in float32, returned in x's dtype."""
    return jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def _matmul_forward(x: Array, w: Array):
    return matmul(x, w), (x, w)


def _matmul_backward(residuals, g: Array):
    x, w = residuals
    g = g.astype(x.dtype)
    # d_x = g @ w^T: the right operand contracting over its last axis is a fast form already.
    d_x = jax.lax.dot_general(g, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    return d_x.astype(x.dtype), over_leading(x, g).astype(w.dtype)


matmul.defvjp(_matmul_forward, _matmul_backward)


def dense_dot_general(
    lhs: Array,
    rhs: Array,
    dimension_numbers: tuple[tuple[Sequence[int], Sequence[int]], tuple[Sequence[int], ...]],
    precision=None,
    preferred_element_type=None,
) -> Array:
    """flax Dense/DenseGeneral's `dot_general` through `matmul`: inputs [..., *in] contract
    their trailing axes with a kernel's leading ones [*in, *out]. Any other form (batch axes,
    other axis orders, float32 operands) goes to jax.lax.dot_general unchanged."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    n = len(lhs_contract)
    plain = (
        lhs_batch
        or rhs_batch
        or tuple(lhs_contract) != tuple(range(lhs.ndim - n, lhs.ndim))
        or tuple(rhs_contract) != tuple(range(n))
        or lhs.dtype != jnp.bfloat16
        or rhs.dtype != jnp.bfloat16
        or preferred_element_type not in (None, lhs.dtype)
    )
    if plain:
        return jax.lax.dot_general(
            lhs,
            rhs,
            dimension_numbers,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    batch_shape, out_shape = lhs.shape[: lhs.ndim - n], rhs.shape[n:]
    out = matmul(lhs.reshape(math.prod(batch_shape), -1), rhs.reshape(math.prod(rhs.shape[:n]), -1))
    return out.reshape(*batch_shape, *out_shape)


def _batched(a: Array, b: Array, a_contract: int, b_contract: int) -> Array:
    """A product over leading batch axes (all but the last two), accumulated in float32."""
    batch = tuple(range(a.ndim - 2))
    dims = (((a_contract,), (b_contract,)), (batch, batch))
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _batched_over_leading(a: Array, b: Array) -> Array:
    """a[..., M, K]^T @ b[..., M, N] -> [..., K, N] in float32, `over_leading` per batch entry."""
    *batch, m, k = a.shape
    nb = len(batch)
    a_t = jnp.moveaxis(a.reshape(*batch, 1, m, k), -1, nb)  # [..., K, 1, M], written out
    b = b.reshape(*batch, 1, m, b.shape[-1])
    axes = tuple(range(nb))
    dims = (((nb + 1, nb + 2), (nb, nb + 1)), (axes, axes))
    return jax.lax.dot_general(a_t, b, dims, preferred_element_type=jnp.float32)


@jax.custom_vjp
def batched_matmul(a: Array, b: Array) -> Array:
    """a[..., M, K] @ b[..., K, N] over leading batch axes, accumulated in float32, returned in
    a's dtype: attention's probabilities times values, heads first."""
    return _batched(a, b, a.ndim - 1, b.ndim - 2).astype(a.dtype)


def _batched_matmul_backward(residuals, g: Array):
    a, b = residuals
    g = g.astype(a.dtype)
    d_a = _batched(g, b, g.ndim - 1, b.ndim - 1)  # g @ b^T
    return d_a.astype(a.dtype), _batched_over_leading(a, g).astype(b.dtype)


batched_matmul.defvjp(lambda a, b: (batched_matmul(a, b), (a, b)), _batched_matmul_backward)


@jax.custom_vjp
def batched_matmul_t(a: Array, b: Array) -> Array:
    """a[..., M, K] @ b[..., N, K]^T over leading batch axes, accumulated in float32, returned
    in a's dtype: attention's queries times keys, heads first."""
    return _batched(a, b, a.ndim - 1, b.ndim - 1).astype(a.dtype)


def _batched_matmul_t_backward(residuals, g: Array):
    a, b = residuals
    g = g.astype(a.dtype)
    d_a = _batched(g, b, g.ndim - 1, b.ndim - 2)  # g @ b
    return d_a.astype(a.dtype), _batched_over_leading(g, a).astype(b.dtype)


batched_matmul_t.defvjp(lambda a, b: (batched_matmul_t(a, b), (a, b)), _batched_matmul_t_backward)


@jax.custom_vjp
def add_bias(y: Array, bias: Array) -> Array:
    """y[M, N] + bias[N], whose bias gradient is a product, not a sum over M.

    XLA:CPU sums a [tokens, features] gradient over the tokens through a tree of reduce-windows:
    ~8 ms for the 'bench' GPT's [2048, 1024] MLP bias inside a bf16 step, ~3 ms for a plain
    float32 sum with YNNPACK off; the same sum as ones[8, M] @ g takes ~0.3 ms.
    """
    return y + bias.astype(y.dtype)


def _add_bias_backward(bias: Array, g: Array):
    ones = jnp.ones((8, g.shape[0]), g.dtype)  # 8 rows: a vector product is no kernel's fast case.
    column_sums = jnp.dot(ones, g, preferred_element_type=jnp.float32)[0]
    return g, column_sums.astype(bias.dtype)


add_bias.defvjp(lambda y, bias: (add_bias(y, bias), bias), _add_bias_backward)


def cpu_bf16(dtype) -> bool:
    """Whether products computing in `dtype` take this module's forms: bf16 on a CPU backend."""
    return jnp.dtype(dtype) == jnp.bfloat16 and jax.default_backend() == "cpu"


def dot_general_for(dtype) -> Callable | None:
    """The `dot_general` for flax dense layers computing in `dtype`: `dense_dot_general`
    where `cpu_bf16(dtype)`, else None (flax's default)."""
    return dense_dot_general if cpu_bf16(dtype) else None
