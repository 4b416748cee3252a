"""GPT-2-style decoder: learned positions, pre-LayerNorm blocks, tied output embedding."""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptjax.models import layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    max_len: int
    num_layers: int
    num_heads: int
    d_model: int
    d_ff: int
    dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-5
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


# GPT-2's published sizes (vocab 50257, context 1024); 'tiny' is for tests and the CPU demo.
SIZES = {
    "tiny": dict(vocab_size=8000, max_len=256, num_layers=2, num_heads=4, d_model=128, d_ff=512),
    "bench": dict(vocab_size=32000, max_len=256, num_layers=4, num_heads=4, d_model=256, d_ff=1024),
    "small": dict(
        vocab_size=50257, max_len=1024, num_layers=12, num_heads=12, d_model=768, d_ff=3072
    ),
    "medium": dict(
        vocab_size=50257, max_len=1024, num_layers=24, num_heads=16, d_model=1024, d_ff=4096
    ),
    "large": dict(
        vocab_size=50257, max_len=1024, num_layers=36, num_heads=20, d_model=1280, d_ff=5120
    ),
    "xl": dict(
        vocab_size=50257, max_len=1024, num_layers=48, num_heads=25, d_model=1600, d_ff=6400
    ),
}


class DecoderBlock(nn.Module):
    """Pre-LN block: x + attn(ln(x)); x + mlp(ln(x))."""

    config: GPTConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array, *, deterministic: bool) -> Array:
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        # GPT-2 scales the init of projections into the residual stream by 1/sqrt(2 * layers).
        out_init = layers.normal_init(0.02 / math.sqrt(2 * cfg.num_layers))
        ln = dict(epsilon=cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype)

        h = nn.LayerNorm(name="ln_1", **ln)(x)
        h = layers.MultiHeadAttention(
            num_heads=cfg.num_heads,
            head_dim=cfg.head_dim,
            dropout_rate=cfg.dropout_rate,
            out_kernel_init=out_init,
            dtype=dtype,
            param_dtype=param_dtype,
            name="attn",
        )(h, h, mask, deterministic=deterministic)
        x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)

        h = nn.LayerNorm(name="ln_2", **ln)(x)
        h = layers.MlpBlock(
            d_ff=cfg.d_ff,
            activation=lambda y: nn.gelu(y, approximate=True),  # GPT-2's tanh GELU.
            out_kernel_init=out_init,
            dtype=dtype,
            param_dtype=param_dtype,
            name="mlp",
        )(h, deterministic=deterministic)
        return x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)


class GPT(nn.Module):
    """Causal language model; returns logits [batch, length, vocab] in float32."""

    config: GPTConfig

    @nn.compact
    def __call__(
        self,
        inputs: Array,  # [batch, length] int32
        positions: Array | None = None,  # [batch, length]; default 0..length-1
        segment_ids: Array | None = None,  # [batch, length]; packed documents, never mixed
        *,
        deterministic: bool = True,
    ) -> Array:
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        length = inputs.shape[1]
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length), inputs.shape)
        mask = layers.causal_mask(length)
        if segment_ids is not None:
            mask = layers.combine_masks(mask, layers.segment_mask(segment_ids, segment_ids))

        embed = nn.Embed(
            cfg.vocab_size,
            cfg.d_model,
            embedding_init=layers.normal_init(0.02),
            dtype=dtype,
            param_dtype=param_dtype,
            name="wte",
        )
        wpe = nn.Embed(
            cfg.max_len,
            cfg.d_model,
            embedding_init=layers.normal_init(0.01),
            dtype=dtype,
            param_dtype=param_dtype,
            name="wpe",
        )
        x = embed(inputs) + wpe(positions)  # [batch, length, d_model]
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        for i in range(cfg.num_layers):
            x = DecoderBlock(cfg, name=f"h_{i}")(x, mask, deterministic=deterministic)
        x = nn.LayerNorm(
            epsilon=cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, name="ln_f"
        )(x)
        logits = embed.attend(x)  # [batch, length, vocab], tied to the input embedding
        return logits.astype(jnp.float32)


def flops_per_token(cfg: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward), as in the PaLM appendix.

    Matmul parameters (blocks and the tied output projection, not the position table) count
    6 FLOPs each; causal attention's score and value matmuls count 6 * layers * seq_len * d_model
    (half of the full 12 * ..., since a causal query only sees the keys before it).
    """
    block = cfg.num_layers * (4 * cfg.d_model * cfg.d_model + 2 * cfg.d_model * cfg.d_ff)
    head = cfg.vocab_size * cfg.d_model
    attention = 6 * cfg.num_layers * seq_len * cfg.d_model
    return 6.0 * (block + head) + attention
