"""Llama-style decoder: rotary positions (RoPE, with Llama 3's frequency scaling), RMSNorm,
a SwiGLU feed-forward block, grouped-query attention (`num_kv_heads` key/value heads shared by
groups of query heads), no biases, a tied or untied output projection. The layout of Llama 2/3,
Mistral, Qwen2 (less its q/k/v biases) and SmolLM, in the names ptjax's GPT uses where the
parts agree (blocks `h_i`, `attn/{query,key,value,out}`, `mlp/{wi_0,wi_1,wo}`, `wte`, `lm_head`),
so the mesh sharding rules, scanned layers, remat and the attention kernels apply unchanged.

The decoding cache holds the key/value heads only: [batch, num_kv_heads, max_len, head_dim].
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptjax.models import attention, gpt, layers, scan

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3's rotary frequency scaling ('llama3' rope_type of transformers): wavelengths
    longer than original_max_len / low_freq_factor are stretched by `factor`, shorter than
    original_max_len / high_freq_factor kept, and those between interpolated."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_len: int

    @classmethod
    def parse(cls, spec: str) -> RopeScaling | None:
        """'none' -> None; 'llama3:FACTOR:LOW:HIGH:ORIGINAL_MAX_LEN' -> the scaling."""
        if spec == "none":
            return None
        parts = spec.split(":")
        if len(parts) != 5 or parts[0] != "llama3":
            raise ValueError(
                f"rope_scaling={spec!r}: give 'none' or "
                "'llama3:FACTOR:LOW_FREQ_FACTOR:HIGH_FREQ_FACTOR:ORIGINAL_MAX_LEN'."
            )
        factor, low, high = (float(p) for p in parts[1:4])
        if not (factor >= 1.0 and 0.0 < low < high):
            raise ValueError(f"rope_scaling={spec!r}: need factor >= 1 and 0 < low < high.")
        return cls(factor, low, high, int(parts[4]))

    def spec(self) -> str:
        return (
            f"llama3:{self.factor:g}:{self.low_freq_factor:g}:{self.high_freq_factor:g}:"
            f"{self.original_max_len}"
        )


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    max_len: int  # The longest sequence the run may use (RoPE has no table).
    num_layers: int
    num_heads: int
    num_kv_heads: int
    d_model: int
    d_ff: int
    rope_theta: float = 10_000.0
    rope_scaling: str = "none"  # RopeScaling.parse's spec.
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    qkv_bias: bool = False  # Biases on the query/key/value projections (Qwen2).
    dropout_rate: float = 0.0
    attention_dropout_rate: float = -1.0  # Of attention probabilities; -1: dropout_rate.
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = False

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def scaling(self) -> RopeScaling | None:
        return RopeScaling.parse(self.rope_scaling)


# Published shapes: SmolLM's 135M and 360M (tied, theta 10k, 2k context), and Llama 3.2 1B
# (tied, theta 500k, 128k context by Llama 3's scaling of an 8k one); 'tiny' for tests and
# the CPU demo. Parameter counts (tests/test_llama.py): 134,515,008; 361,821,120;
# 1,235,814,400.
SIZES = {
    "tiny": dict(
        vocab_size=8000,
        max_len=256,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        d_model=128,
        d_ff=384,
    ),  # fmt: skip
    "135m": dict(
        vocab_size=49152,
        max_len=2048,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        d_model=576,
        d_ff=1536,
        norm_eps=1e-5,
    ),  # fmt: skip
    "360m": dict(
        vocab_size=49152,
        max_len=2048,
        num_layers=32,
        num_heads=15,
        num_kv_heads=5,
        d_model=960,
        d_ff=2560,
        norm_eps=1e-5,
    ),  # fmt: skip
    "1b": dict(
        vocab_size=128256,
        max_len=131072,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        d_model=2048,
        d_ff=8192,
        rope_theta=500_000.0,
        rope_scaling="llama3:32:1:4:8192",
    ),  # fmt: skip
}


def inverse_frequencies(cfg: LlamaConfig) -> Array:
    """[head_dim / 2] float32 rotary frequencies, scaled as `cfg.rope_scaling` says."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    scaling = cfg.scaling
    if scaling is None:
        return inv
    low_wavelen = scaling.original_max_len / scaling.low_freq_factor
    high_wavelen = scaling.original_max_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > low_wavelen, inv / scaling.factor, inv)
    smooth = (scaling.original_max_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, smoothed, scaled)


def rotary_tables(cfg: LlamaConfig, positions: Array) -> tuple[Array, Array]:
    """(cos, sin) [batch, length, head_dim] float32 at `positions` [batch, length]: each
    frequency twice, the halves layout of transformers' `rotate_half`."""
    angles = positions[..., None].astype(jnp.float32) * inverse_frequencies(cfg)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: Array, rope: tuple[Array, Array]) -> Array:
    """x [batch, length, heads, head_dim] rotated: x * cos + rotate_half(x) * sin, in float32."""
    cos, sin = (t[:, :, None, :] for t in rope)
    half = x.shape[-1] // 2
    x32 = x.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


class RMSNorm(nn.Module):
    """x / rms(x) * scale, the statistics in float32 (as transformers' LlamaRMSNorm)."""

    epsilon: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones_init(), (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
        return jnp.asarray(scale, self.dtype) * normed.astype(self.dtype)


def grouped_attention(
    query: Array,  # [batch, q_len, heads, head_dim]
    key: Array,  # [batch, kv_heads, kv_len, head_dim] (a cache's layout)
    value: Array,
    mask: Array,  # [batch, 1, q_len, kv_len] bool
    dtype: Any,
) -> Array:
    """Softmax attention of query-head groups on their shared key/value head, read in place
    from a decoding cache (no copy of a head per query head); [batch, q_len, heads, head_dim]."""
    batch, q_len, heads, head_dim = query.shape
    kv_heads = key.shape[1]
    q = query.reshape(batch, q_len, kv_heads, heads // kv_heads, head_dim)
    q = q * jnp.asarray(head_dim**-0.5, q.dtype)
    logits = jnp.einsum("bqkgd,bkld->bkgql", q, key).astype(jnp.float32)
    logits = jnp.where(mask[:, :, None], logits, layers.NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    out = jnp.einsum("bkgql,bkld->bqkgd", weights, value)
    return out.reshape(batch, q_len, heads, head_dim)


class Attention(nn.Module):
    """Grouped-query self-attention with rotary positions; no biases but Qwen2's on the
    query, key and value projections (`qkv_bias`)."""

    config: LlamaConfig

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Array | attention.Mask,
        rope: tuple[Array, Array],
        *,
        deterministic: bool,
        cache: dict[str, Array] | None = None,
        cache_index: Array | None = None,
    ) -> tuple[Array, dict[str, Array] | None]:
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)

        def proj(name: str, heads: int) -> layers.Dense:
            return layers.Dense(
                (heads, cfg.head_dim),
                use_bias=cfg.qkv_bias,
                kernel_init=layers.normal_init(0.02),
                dtype=dtype,
                param_dtype=param_dtype,
                name=name,
            )

        query = apply_rotary(proj("query", cfg.num_heads)(x), rope)  # [b, l, heads, hd]
        key = apply_rotary(proj("key", cfg.num_kv_heads)(x), rope)  # [b, l, kv_heads, hd]
        value = proj("value", cfg.num_kv_heads)(x)
        if cache is None:
            groups = cfg.num_heads // cfg.num_kv_heads
            rate = layers.attention_dropout_rate(cfg)
            out = layers.dot_product_attention(
                query,
                jnp.repeat(key, groups, axis=2),  # Each query head's key/value head.
                jnp.repeat(value, groups, axis=2),
                mask,
                dropout_rate=rate,
                dropout_rng=None if deterministic or rate == 0.0 else self.make_rng("dropout"),
                deterministic=deterministic,
                dtype=dtype,
                where="Llama self-attention",
            )
        else:
            key, value = layers.write_cache(cache, key, value, cache_index)
            cache = {"key": key, "value": value}
            out = grouped_attention(query, key, value, mask, dtype)
        out = layers.Dense(
            cfg.d_model,
            axis=(-2, -1),
            use_bias=False,
            kernel_init=layers.normal_init(0.02 / math.sqrt(2 * cfg.num_layers)),
            dtype=dtype,
            param_dtype=param_dtype,
            name="out",
        )(out)
        return out, cache


class DecoderBlock(nn.Module):
    """x + attn(rmsnorm(x)); x + swiglu(rmsnorm(x))."""

    config: LlamaConfig

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Array | attention.Mask,
        rope: tuple[Array, Array],
        *,
        deterministic: bool,
        cache: dict[str, Array] | None = None,
        cache_index: Array | None = None,
    ) -> tuple[Array, dict[str, Array] | None]:
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        norm = dict(epsilon=cfg.norm_eps, dtype=dtype, param_dtype=param_dtype)
        h, cache = Attention(cfg, name="attn")(
            RMSNorm(name="ln_1", **norm)(x),
            mask,
            rope,
            deterministic=deterministic,
            cache=cache,
            cache_index=cache_index,
        )
        x = x + layers.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        h = SwiGLU(cfg, name="mlp")(RMSNorm(name="ln_2", **norm)(x))
        return x + layers.Dropout(cfg.dropout_rate)(h, deterministic=deterministic), cache


class SwiGLU(nn.Module):
    """wo(silu(wi_0(x)) * wi_1(x)): Llama's gate, up and down projections, no biases."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        dense = dict(
            use_bias=False, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype)
        )
        init = layers.normal_init(0.02)
        gate = layers.Dense(cfg.d_ff, kernel_init=init, name="wi_0", **dense)(x)
        up = layers.Dense(cfg.d_ff, kernel_init=init, name="wi_1", **dense)(x)
        out_init = layers.normal_init(0.02 / math.sqrt(2 * cfg.num_layers))
        return layers.Dense(cfg.d_model, kernel_init=out_init, name="wo", **dense)(
            nn.silu(gate) * up
        )


class OutputHead(nn.Module):
    """An untied output projection's kernel [d_model, vocab] (transformers' lm_head)."""

    shape: tuple[int, int]
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self) -> Array:
        return self.param("kernel", layers.normal_init(0.02), self.shape, self.param_dtype)


class Llama(nn.Module):
    """Causal language model with GPT's interface (ptjax.models.gpt.GPT): logits [batch,
    length, vocab] in float32; `return_hidden` gives (final hidden states, output projection
    [vocab, d_model]) for `losses.output_cross_entropy`; `cache` decodes incrementally."""

    config: LlamaConfig

    @nn.compact
    def __call__(
        self,
        inputs: Array,  # [batch, length] int32
        positions: Array | None = None,  # [batch, length]; default 0..length-1
        segment_ids: Array | None = None,  # [batch, length]; packed documents, never mixed
        *,
        deterministic: bool = True,
        cache: dict[str, Any] | None = None,
        input_mask: Array | None = None,  # [batch, length] bool; with a cache only
        output_kernel: Array | None = None,  # [d_model, vocab], laid out once to decode
        return_hidden: bool = False,
        last_only: bool = False,
    ) -> Array | tuple[Array, Any]:
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        if cfg.num_heads % cfg.num_kv_heads:
            raise ValueError(
                f"num_heads={cfg.num_heads} is not a multiple of num_kv_heads={cfg.num_kv_heads}."
            )
        length = inputs.shape[1]
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length), inputs.shape)
        index = None
        if cache is None:
            mask = attention.Mask(segment_ids, segment_ids, causal=True)
        else:
            index, input_mask, key_mask, mask = gpt.cache_mask(cache, inputs, input_mask)
        rope = rotary_tables(cfg, positions)
        embed = nn.Embed(
            cfg.vocab_size,
            cfg.d_model,
            embedding_init=layers.normal_init(0.02),
            dtype=dtype,
            param_dtype=param_dtype,
            name="wte",
        )
        x = layers.Dropout(cfg.dropout_rate)(embed(inputs), deterministic=deterministic)
        x, new_layers = gpt.run_blocks(
            DecoderBlock,
            cfg,
            x,
            (mask, rope),
            deterministic=deterministic,
            cache=cache,
            index=index,
        )
        if last_only:
            x = x[:, -1:]
        x = RMSNorm(cfg.norm_eps, dtype=dtype, param_dtype=param_dtype, name="ln_f")(x)
        if cfg.tie_embeddings:
            table = embed.embedding  # [vocab, d_model]
        else:
            table = OutputHead((cfg.d_model, cfg.vocab_size), param_dtype, name="lm_head")().T
        if return_hidden:
            return x, jnp.asarray(table, dtype)  # [batch, length, d_model], [vocab, d_model]
        if output_kernel is None:
            output_kernel = table.T
        logits = (x @ jnp.asarray(output_kernel, x.dtype)).astype(jnp.float32)
        if cache is None:
            return logits
        return logits, gpt.next_cache(cache, length, input_mask, key_mask, new_layers)


def init_cache(cfg: LlamaConfig, batch: int, max_len: int) -> dict[str, Any]:
    """An empty decoding cache for `max_len` positions, key/value heads only."""
    return gpt.empty_cache(
        cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, cfg.dtype, batch, max_len
    )


def prepare_decode_params(params: Any) -> Any:
    """Scanned parameters in the per-layer layout decoding runs, and the output projection laid
    out [d_model, vocab] once (the tied table transposed, or the head's kernel)."""
    params = dict(scan.unstack_layers(params))
    head = params["lm_head"]["kernel"] if "lm_head" in params else params["wte"]["embedding"].T
    return {**params, gpt.DECODE_HEAD: head}


def decode_fns(model: Llama, max_new_tokens: int) -> tuple[Callable, Callable]:
    """(prefill, step) for ptjax.decoding, as GPT's: prompts left-padded."""
    return gpt.decode_fns(model, max_new_tokens, init_cache=init_cache)


def num_params(cfg: LlamaConfig) -> int:
    """Parameters of the model, from its shape."""
    attn = cfg.d_model * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    if cfg.qkv_bias:
        attn += cfg.head_dim * (cfg.num_heads + 2 * cfg.num_kv_heads)
    block = attn + 3 * cfg.d_model * cfg.d_ff + 2 * cfg.d_model
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model
    return cfg.vocab_size * cfg.d_model + cfg.num_layers * block + cfg.d_model + head


def flops_per_token(cfg: LlamaConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), as gpt.flops_per_token: 6 per matmul
    parameter (blocks and output projection) plus causal attention's score and value products
    (6 * layers * seq_len * heads * head_dim)."""
    attn = cfg.d_model * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    block = cfg.num_layers * (attn + 3 * cfg.d_model * cfg.d_ff)
    head = cfg.vocab_size * cfg.d_model
    return 6.0 * (block + head) + 6 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim
