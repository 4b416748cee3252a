"""bf16 products accumulated in float32, in the forms XLA:CPU runs fastest.

On XLA:CPU (jaxlib 0.10) YNNPACK runs a bf16 x bf16 product that returns float32 on this
machine's AVX512-BF16 at 330-410 GFLOP/s, about twice float32's ~205. A bf16 product that returns
bf16, which is what a plain `x @ w` in bf16 asks for, is not YNNPACK's: XLA computes it through
float32 copies of its operands (110-190 GFLOP/s). YNNPACK also takes only products whose left
operand contracts over its last dimension; a weight gradient contracts over the tokens, the
leading dimension of both operands, and XLA then folds any transpose written before it into the
product and falls back the same way. `_transposed_view` writes that transpose through a view
with an extra unit axis, which XLA materialises instead (about 1 MB for a [2048, 256] bf16
activation), and the product is YNNPACK's again (310-350 GFLOP/s). All figures:
`[2048, 256] x [256, 1024]`-sized products, best of 5, this 2-core EPYC, in BUILD_NOTES.md.

`matmul` and `matmul_t` (layers.Dense, attention) accumulate in float32 and round once to bf16,
the same numbers as the plain bf16 product, with a backward pass made of the fast forms. They
serve bf16 in steps that take the CPU forms (`cpu_bf16`, ptjax.backend); accelerators keep plain
products, whose bf16 products accumulate in float32 already. `add_bias` serves every dtype in
those steps, and only there.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ptjax import backend

Array = jax.Array


def _transposed_view(a: Array) -> Array:
    """a[..., M, K] -> [..., K, 1, M]: the transpose, which XLA:CPU writes out (it would fold a
    plain transpose into the product that reads it, off YNNPACK's kernels)."""
    *batch, m, k = a.shape
    return jnp.moveaxis(a.reshape(*batch, 1, m, k), -1, len(batch))


def _product(a: Array, b: Array, a_contract: int, b_contract: int) -> Array:
    """A product over leading batch axes (all but the last two), accumulated in float32."""
    batch = tuple(range(a.ndim - 2))
    dims = (((a_contract,), (b_contract,)), (batch, batch))
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def over_leading(a: Array, b: Array) -> Array:
    """a[..., M, K]^T @ b[..., M, N] -> [..., K, N], the product over the leading (token) axis
    of each batch entry, accumulated in float32 and returned in a's dtype.

    The result is rounded to a's dtype here on purpose: jaxlib 0.10 folds a transpose of a bf16
    product's float32 result into the product, which then fails at run time ("Unsupported
    element type for DotThunk::Execute: BF16 x BF16 = F32"); the rounding keeps them apart.
    """
    nb = a.ndim - 2
    b = b.reshape(*b.shape[:nb], 1, *b.shape[nb:])  # [..., 1, M, N]
    axes = tuple(range(nb))
    dims = (((nb + 1, nb + 2), (nb, nb + 1)), (axes, axes))
    product = jax.lax.dot_general(_transposed_view(a), b, dims, preferred_element_type=jnp.float32)
    return product.astype(a.dtype)


def times_transposed(x: Array, w: Array) -> Array:
    """x[M, K] @ w[N, K]^T -> [M, N] in float32: a tied output layer's logits.

    For bf16 operands w's transpose is written out (`_transposed_view`, 16 MB for a 32k x 256
    embedding): with the transpose folded into the product instead, YNNPACK ran the 'bench'
    GPT's [2048, 256] x [256, 32000] at 184 GFLOP/s, written out at 340. float32 operands gain
    nothing from it (171-196 against 175-184) and take the plain product.
    """
    if x.dtype != jnp.bfloat16 or w.dtype != jnp.bfloat16:
        return jnp.dot(x, w.T, preferred_element_type=jnp.float32)
    product = jax.lax.dot_general(
        x, _transposed_view(w), (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )
    return product.reshape(x.shape[0], w.shape[0])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(a: Array, b: Array, b_transposed: bool = False) -> Array:
    """a[..., M, K] @ b[..., K, N] (b[..., N, K]^T if b_transposed) over optional leading batch
    axes, accumulated in float32, returned in a's dtype: dense layers, and attention's
    probabilities times values (queries times keys: `matmul_t`)."""
    return _product(a, b, a.ndim - 1, b.ndim - (1 if b_transposed else 2)).astype(a.dtype)


def _matmul_backward(b_transposed: bool, residuals, g: Array):
    a, b = residuals
    g = g.astype(a.dtype)
    # d_a = g @ b (transposed) or g @ b^T: both fast forms as they stand.
    d_a = _product(g, b, g.ndim - 1, b.ndim - (2 if b_transposed else 1))
    d_b = over_leading(g, a) if b_transposed else over_leading(a, g)
    return d_a.astype(a.dtype), d_b.astype(b.dtype)


matmul.defvjp(lambda a, b, b_transposed: (matmul(a, b, b_transposed), (a, b)), _matmul_backward)
matmul_t = functools.partial(matmul, b_transposed=True)


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
    """Whether products computing in `dtype` take this module's forms: bf16 in a step that takes
    the CPU forms (ptjax.backend)."""
    return jnp.dtype(dtype) == jnp.bfloat16 and backend.cpu_forms()
