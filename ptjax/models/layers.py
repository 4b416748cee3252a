"""Blocks shared by the model families: attention, feed-forward, masks, initialisers.

Attention is split into "project q/k/v" and `dot_product_attention` so that a decoding cache can
sit between the two (the cache stores projected keys and values), and so that T5's relative
position bias enters as an additive `bias`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptjax import backend
from ptjax.models import attention, mixed_matmul

Array = jax.Array
Dtype = jnp.dtype

NEG_INF = -1e9  # Finite, so that a fully masked row gives a uniform (not NaN) softmax.


# Rematerialisation policies for `remat` (config key model.remat): what a block keeps from the
# forward pass for the backward pass; the rest is recomputed. 'none' keeps everything (no remat).
REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,  # Keep only the block's inputs.
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # Keep matmul outputs.
    "dots_with_no_batch_dims_saveable": (
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable  # Keep weight matmuls only.
    ),
}


def remat(block: type[nn.Module], policy: str) -> type[nn.Module]:
    """`block` with its activations rematerialised under REMAT_POLICIES[policy].

    The one place where the families' transformer blocks get `nn.remat`. The block is called as
    before (`deterministic` as a keyword); it is passed to jax.checkpoint as a static positional
    argument, since keyword arguments would be traced. Parameter names do not change, so a
    checkpoint restores with any policy.
    """
    if policy not in REMAT_POLICIES:
        raise ValueError(
            f"Unknown remat policy {policy!r}; expected one of {list(REMAT_POLICIES)}."
        )
    if policy == "none":
        return block

    class Positional(block):
        def __call__(self, deterministic: bool, *args, **kwargs):
            return super().__call__(*args, deterministic=deterministic, **kwargs)

    checkpointed = nn.remat(Positional, static_argnums=(1,), policy=REMAT_POLICIES[policy])

    class Remat(checkpointed):
        def __call__(self, *args, deterministic: bool, **kwargs):
            return super().__call__(deterministic, *args, **kwargs)

    Remat.__name__ = Remat.__qualname__ = f"Remat{block.__name__}"
    return Remat


def scan_stack(block: type[nn.Module], policy: str, length: int) -> type[nn.Module]:
    """`length` copies of `block` (rematerialised under `policy`) as one `nn.scan`.

    The one place where the families' block stacks get scanned (config key model.scan_layers):
    the block is traced and compiled once, its parameters get a leading [length] axis and each
    layer its own dropout stream. Called as `stack(cfg, name=...)(x, *args,
    deterministic=...)`, which returns the residual stream after the last block; `args` are
    the same for every layer (masks, position biases, the encoder output). The block returns x
    or (x, ...); what follows x (keys and values) is dropped, so decoding with a cache runs the
    unscanned layout (ptjax.models.scan converts the parameters).
    """
    base = remat(block, policy)

    class Step(base):
        def __call__(self, x: Array, args: tuple, deterministic: bool) -> tuple[Array, None]:
            out = super().__call__(x, *args, deterministic=deterministic)
            return constrain_batch(out[0] if isinstance(out, tuple) else out), None

    scanned = nn.scan(
        Step,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast),  # args and `deterministic`: every layer's.
        length=length,
    )

    class Scanned(scanned):
        def __call__(self, x: Array, *args: Any, deterministic: bool) -> Array:
            return super().__call__(x, args, deterministic)[0]

    Scanned.__name__ = Scanned.__qualname__ = f"Scanned{block.__name__}"
    return Scanned


def constrain_batch(x: Array) -> Array:
    """Keeps a [batch, ...] activation's rows split over the mesh's batch axes when a step is
    traced on a mesh (under flax logical-axis rules, set by ptjax.train.parallel); a no-op
    under pmap and outside training. Called on the residual stream between blocks."""
    return nn.with_logical_constraint(x, ("batch",) + (None,) * (x.ndim - 1))


def attention_dropout_rate(cfg: Any) -> float:
    """A family config's attention-probability dropout: its attention_dropout_rate, or its
    dropout_rate when that is -1. Zero lets training steps take a fused attention kernel."""
    rate = cfg.attention_dropout_rate
    return cfg.dropout_rate if rate < 0 else rate


def normal_init(stddev: float = 0.02) -> Callable:
    return nn.initializers.normal(stddev=stddev)


def causal_mask(length: int) -> Array:
    """[1, 1, length, length] bool: query i may attend to keys j <= i."""
    idx = jnp.arange(length)
    return (idx[:, None] >= idx[None, :])[None, None]


def segment_mask(q_segment_ids: Array, kv_segment_ids: Array) -> Array:
    """[batch, 1, q_len, kv_len] bool: attention only within one packed document."""
    return (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :])[:, None]


def combine_masks(*masks: Array | None) -> Array | None:
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = jnp.logical_and(out, m)
    return out


def _rotate_left(x: Array, bits: int) -> Array:
    return (x << jnp.uint32(bits)) | (x >> jnp.uint32(32 - bits))


def threefry2x32(key: tuple[Array, Array], x: tuple[Array, Array]) -> tuple[Array, Array]:
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011, as jax.random's threefry), written out
    as plain array operations so that XLA fuses it into its consumer.

    jax.random lowers it on CPU as a rolled loop that is run as its own loop over the whole
    array; drawing dropout masks this way took the 'bench' T5 train step from ~2.08 to ~1.9 s.
    """
    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    ks = (key[0], key[1], key[0] ^ key[1] ^ jnp.uint32(0x1BD11BDA))
    x0, x1 = x[0] + ks[0], x[1] + ks[1]
    for i in range(5):
        for r in rotations[i % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, r) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x0, x1


def random_halves(rng: Array, shape: tuple[int, ...]) -> Array:
    """uint16 random numbers of `shape` from a threefry key: four per counter of threefry2x32."""
    data = (
        jax.random.key_data(rng) if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
    )
    total = math.prod(shape)
    if data.shape != (2,):  # Another PRNG implementation: its own bits.
        bits = jax.random.bits(rng, (-(-total // 2),), jnp.uint32)
        return jax.lax.bitcast_convert_type(bits, jnp.uint16).reshape(-1)[:total].reshape(shape)
    data = data.astype(jnp.uint32)
    count = jnp.arange(-(-total // 4), dtype=jnp.uint32)
    x0, x1 = threefry2x32((data[0], data[1]), (count, jnp.zeros_like(count)))
    words = jnp.stack([x0, x1], axis=-1)  # [total / 4, 2]
    return jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)[:total].reshape(shape)


def dropout_keep(rng: Array, rate: float, shape: tuple[int, ...]) -> tuple[Array, float]:
    """(keep mask of `shape`, the scale for kept values) for dropout at `rate`.

    In steps on accelerators (ptjax.backend): jax.random.bernoulli, whose threefry
    (jax_threefry_partitionable, set at start-up) each device draws for its own shard.
    In steps that take the CPU forms each mask entry compares 16 random bits (`random_halves`)
    with round((1 - rate) * 2^16): half the threefry work of jax.random.bernoulli, which on
    XLA:CPU made dropout a fifth of a T5 train step. The keep probability is that threshold /
    2^16 (within 2^-17 of 1 - rate) and kept values are scaled by its inverse, so the
    expectation is preserved.
    """
    if not backend.cpu_forms():
        return jax.random.bernoulli(rng, 1.0 - rate, shape), 1.0 / (1.0 - rate)
    threshold = min(max(round((1.0 - rate) * 65536), 1), 65535)
    return random_halves(rng, shape) < jnp.uint16(threshold), 65536.0 / threshold


class Dropout(nn.Module):
    """Inverted dropout drawing its mask with `dropout_keep`; the 'dropout' RNG stream, as
    flax's nn.Dropout (same interface)."""

    rate: float

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        keep, scale = dropout_keep(self.make_rng("dropout"), self.rate, x.shape)
        return jnp.where(keep, x * jnp.asarray(scale, x.dtype), jnp.zeros((), x.dtype))


def dot_product_attention(
    query: Array,  # [batch, q_len, heads, head_dim]
    key: Array,  # [batch, kv_len, heads, head_dim]; [batch, heads, kv_len, ...] if heads_first
    value: Array,  # as key
    mask: Array | attention.Mask | None = None,  # dense: [batch or 1, 1, q_len, kv_len] bool
    bias: Array | None = None,  # [batch or 1, heads, q_len, kv_len]
    *,
    kv_heads_first: bool = False,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    deterministic: bool = True,
    dtype: Dtype = jnp.float32,
    where: str = "attention",  # What the attention is, for the log of kernel choices.
) -> Array:
    """Softmax attention, softmax in float32; returns [batch, q_len, heads, head_dim].

    `kv_heads_first` takes keys and values laid out [batch, heads, kv_len, head_dim], as the
    decoding caches hold them: the products then read them in place, where the default layout
    makes XLA:CPU copy the whole cache into that order at every step (a quarter of a GPT
    decoding step on the 'bench' model).

    A `mask` described as an attention.Mask goes to the run's attention kernel
    (ptjax.models.attention) when it can take the call; otherwise, and for a dense mask, this
    function computes it in XLA.
    """
    if scale is None:
        scale = query.shape[-1] ** -0.5
    if isinstance(mask, attention.Mask):
        dropout = not deterministic and dropout_rate > 0.0
        out = None
        if not kv_heads_first:  # Decoding caches (heads first) stay with XLA.
            out = attention.fused(
                query,
                key,
                value,
                mask,
                bias,
                scale=scale,
                dropout=dropout,
                dtype=dtype,
                where=where,
            )
        if out is not None:
            return out
        mask = mask.dense(query.shape[1], key.shape[2 if kv_heads_first else 1])
    query = query * jnp.asarray(scale, query.dtype)
    # bf16 on a CPU: heads-first products accumulating in float32 (mixed_matmul), 20% faster
    # forward and backward than the einsums, which XLA:CPU runs through float32 copies.
    heads_first_products = (
        not kv_heads_first
        and mixed_matmul.cpu_bf16(dtype)
        and query.dtype == key.dtype == value.dtype == jnp.dtype(dtype)
    )
    if heads_first_products:
        query, key, value = heads_first(query), heads_first(key), heads_first(value)
        logits = mixed_matmul.matmul_t(query, key)  # [batch, heads, q_len, kv_len]
    else:
        kv = "bhkd" if kv_heads_first else "bkhd"
        logits = jnp.einsum(f"bqhd,{kv}->bhqk", query, key)
    logits = logits.astype(jnp.float32)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    if not deterministic and dropout_rate > 0.0:
        keep, scale = dropout_keep(dropout_rng, dropout_rate, weights.shape)
        weights = jnp.where(keep, weights * jnp.asarray(scale, weights.dtype), 0).astype(dtype)
    if heads_first_products:
        return heads_first(mixed_matmul.matmul(weights, value))  # Back to [b, q, h, d].
    return jnp.einsum(f"bhqk,{kv}->bqhd", weights, value)


def heads_first(x: Array) -> Array:
    """[batch, length, heads, head_dim] -> [batch, heads, length, head_dim], a cache's layout."""
    return jnp.swapaxes(x, 1, 2)


def write_cache(cache: dict[str, Array], key: Array, value: Array, index: Array):
    """(keys, values): `cache`'s [batch, heads, max_len, head_dim] with the new [batch, length,
    heads, head_dim] keys and values written at positions index..index + length - 1."""
    start = (0, 0, index, 0)
    key = jax.lax.dynamic_update_slice(
        cache["key"], heads_first(key).astype(cache["key"].dtype), start
    )
    value = jax.lax.dynamic_update_slice(
        cache["value"], heads_first(value).astype(cache["value"].dtype), start
    )
    return key, value


class Dense(nn.Module):
    """flax's DenseGeneral over trailing axes: the same parameters ('kernel' [*in, *features],
    'bias' [*features]), initial values and outputs. In steps that take the CPU forms
    (ptjax.backend) it uses two CPU-minded products (ptjax.models.mixed_matmul): bf16 inputs
    accumulate in float32 where that is fast, and the bias gradient is a product instead of
    XLA:CPU's slow tree of sums over the tokens; elsewhere the plain product and sum."""

    features: int | tuple[int, ...]
    axis: int | tuple[int, ...] = -1  # Contracted input axes; trailing ones only.
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        axes = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
        axes = tuple(sorted(a % inputs.ndim for a in axes))
        if axes != tuple(range(inputs.ndim - len(axes), inputs.ndim)):
            raise ValueError(f"Dense contracts trailing axes only, not {self.axis}.")
        in_shape = inputs.shape[axes[0] :]
        k, n = math.prod(in_shape), math.prod(features)

        def kernel_init(rng, shape, dtype):  # flax's: initialised as [in, out], then reshaped.
            return jnp.reshape(self.kernel_init(rng, (k, n), dtype), shape)

        kernel = self.param("kernel", kernel_init, in_shape + features, self.param_dtype)
        x = jnp.asarray(inputs, self.dtype).reshape(-1, k)
        kernel = jnp.asarray(kernel, self.dtype).reshape(k, n)
        if mixed_matmul.cpu_bf16(self.dtype):
            y = mixed_matmul.matmul(x, kernel)
        else:
            y = jnp.dot(x, kernel)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, features, self.param_dtype).reshape(n)
            if backend.cpu_forms():
                y = mixed_matmul.add_bias(y, bias)
            else:
                y = y + jnp.asarray(bias, y.dtype)
        return y.reshape(*inputs.shape[: axes[0]], *features)


FUSED_QKV = "qkv"


def fused_qkv(
    inputs: Array,
    num_heads: int,
    head_dim: int,
    *,
    use_bias: bool,
    dtype: Dtype,
    param_dtype: Dtype,
) -> tuple[Array, Array, Array]:
    """(query, key, value) [batch, length, heads, head_dim] of a self-attention whose decoding
    parameters hold one FUSED_QKV projection; called from the attention module's __call__."""
    qkv = Dense(
        (3, num_heads, head_dim),
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        name=FUSED_QKV,
    )(inputs)  # [batch, length, 3, heads, head_dim]
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


def fuse_qkv_for_decoding(attention: dict[str, Any]) -> dict[str, Any]:
    """A self-attention's parameters with its query, key and value projections as one ('qkv',
    kernel [d_model, 3, heads, head_dim]), which MultiHeadAttention then applies instead.

    For decoding loops, made once before them: at one token per row a step's projections are
    bound by per-operation overhead, and one product of three times the width costs about two
    thirds of three. The same function of the inputs; training keeps the separate projections.
    """
    parts = [attention[name] for name in ("query", "key", "value")]
    fused = {"kernel": jnp.stack([p["kernel"] for p in parts], axis=1)}
    if "bias" in parts[0]:
        fused["bias"] = jnp.stack([p["bias"] for p in parts], axis=0)
    rest = {k: v for k, v in attention.items() if k not in ("query", "key", "value")}
    return {**rest, FUSED_QKV: fused}


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections and an output projection."""

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    use_bias: bool = True
    kernel_init: Callable = normal_init()
    out_kernel_init: Callable = normal_init()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    where: str = "attention"  # What it is, for the log of attention-kernel choices.

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,  # [batch, q_len, d_model]
        inputs_kv: Array,  # [batch, kv_len, d_model]
        mask: Array | attention.Mask | None = None,
        bias: Array | None = None,
        *,
        deterministic: bool = True,
        cache: dict[str, Array] | None = None,
        cache_index: Array | None = None,
    ) -> tuple[Array, dict[str, Array] | None]:
        """Returns (output [batch, q_len, d_model], updated cache or None).

        With a cache ({'key', 'value'}: [batch, heads, max_len, head_dim]), the new keys and
        values are written at positions cache_index.. and the queries attend over the whole
        cache; `mask` must then be [batch, 1, q_len, max_len]. Without one, `mask` is best an
        attention.Mask, which a fused kernel can take.
        """

        def proj(name: str) -> Dense:
            return Dense(
                (self.num_heads, self.head_dim),
                use_bias=self.use_bias,
                kernel_init=self.kernel_init,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )

        if self.has_variable("params", FUSED_QKV):  # Decoding params: fuse_qkv_for_decoding.
            query, key, value = fused_qkv(  # Self-attention only.
                inputs_q,
                self.num_heads,
                self.head_dim,
                use_bias=self.use_bias,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )
        else:
            query = proj("query")(inputs_q)  # [batch, q_len, heads, head_dim]
            key = proj("key")(inputs_kv)  # [batch, kv_len, heads, head_dim]
            value = proj("value")(inputs_kv)
        if cache is not None:
            key, value = write_cache(cache, key, value, cache_index)
            cache = {"key": key, "value": value}
        dropout_rng = None
        if not deterministic and self.dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        out = dot_product_attention(
            query,
            key,
            value,
            mask,
            bias,
            dropout_rate=self.dropout_rate,
            dropout_rng=dropout_rng,
            kv_heads_first=cache is not None,
            deterministic=deterministic,
            dtype=self.dtype,
            where=self.where,
        )
        out = Dense(
            inputs_q.shape[-1],
            axis=(-2, -1),
            use_bias=self.use_bias,
            kernel_init=self.out_kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="out",
        )(out)  # [batch, q_len, d_model]
        return out, cache


class MlpBlock(nn.Module):
    """Position-wise feed-forward: Dense -> activation -> dropout -> Dense."""

    d_ff: int
    activation: Callable = nn.gelu
    dropout_rate: float = 0.0
    use_bias: bool = True
    kernel_init: Callable = normal_init()
    out_kernel_init: Callable = normal_init()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
        d_model = x.shape[-1]
        h = Dense(
            self.d_ff,
            use_bias=self.use_bias,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="wi",
        )(x)  # [batch, length, d_ff]
        h = self.activation(h)
        h = Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return Dense(
            d_model,
            use_bias=self.use_bias,
            kernel_init=self.out_kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="wo",
        )(h)
