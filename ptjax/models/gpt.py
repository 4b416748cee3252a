"""GPT-2-style decoder: learned positions, pre-LayerNorm blocks, tied output embedding."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptjax.models import attention, layers, scan

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
    attention_dropout_rate: float = -1.0  # Of attention probabilities; -1: dropout_rate.
    layer_norm_eps: float = 1e-5
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"  # A key of layers.REMAT_POLICIES, applied to each DecoderBlock.
    scan_layers: bool = False  # The blocks as one nn.scan named 'h' (layers.scan_stack).

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
    def __call__(
        self,
        x: Array,
        mask: Array | attention.Mask,
        *,
        deterministic: bool,
        cache: dict[str, Array] | None = None,
        cache_index: Array | None = None,
    ) -> tuple[Array, dict[str, Array] | None]:
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        # GPT-2 scales the init of projections into the residual stream by 1/sqrt(2 * layers).
        out_init = layers.normal_init(0.02 / math.sqrt(2 * cfg.num_layers))
        ln = dict(epsilon=cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype)

        h = nn.LayerNorm(name="ln_1", **ln)(x)
        h, cache = layers.MultiHeadAttention(
            num_heads=cfg.num_heads,
            head_dim=cfg.head_dim,
            dropout_rate=layers.attention_dropout_rate(cfg),
            out_kernel_init=out_init,
            dtype=dtype,
            param_dtype=param_dtype,
            name="attn",
            where="GPT self-attention",
        )(h, h, mask, deterministic=deterministic, cache=cache, cache_index=cache_index)
        x = x + layers.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)

        h = nn.LayerNorm(name="ln_2", **ln)(x)
        h = layers.MlpBlock(
            d_ff=cfg.d_ff,
            activation=lambda y: nn.gelu(y, approximate=True),  # GPT-2's tanh GELU.
            out_kernel_init=out_init,
            dtype=dtype,
            param_dtype=param_dtype,
            name="mlp",
        )(h, deterministic=deterministic)
        return x + layers.Dropout(cfg.dropout_rate)(h, deterministic=deterministic), cache


class GPT(nn.Module):
    """Causal language model; returns logits [batch, length, vocab] in float32.

    With `return_hidden` it returns (final hidden states [batch, length, d_model], output
    embedding [vocab, d_model]) instead of logits, for `losses.output_cross_entropy`.
    With `cache` (from `init_cache`) it decodes incrementally and returns (logits, new cache):
    the inputs are written into the cache after what it holds, `input_mask` marks real tokens
    (False for left padding), and attention covers everything cached so far.
    """

    config: GPTConfig

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
        output_kernel: Array | None = None,  # [d_model, vocab]: wte transposed once, to decode
        return_hidden: bool = False,
        last_only: bool = False,  # Logits for the last position only (a prefill's next token).
    ) -> Array | tuple[Array, Any]:
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        length = inputs.shape[1]
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length), inputs.shape)
        index = None
        if cache is None:
            mask = attention.Mask(segment_ids, segment_ids, causal=True)
        else:
            index, input_mask, key_mask, mask = cache_mask(cache, inputs, input_mask)

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
        x = layers.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        x, new_layers = run_blocks(
            DecoderBlock, cfg, x, (mask,), deterministic=deterministic, cache=cache, index=index
        )
        if last_only:
            x = x[:, -1:]
        x = nn.LayerNorm(
            epsilon=cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, name="ln_f"
        )(x)
        if return_hidden:  # For a loss that applies the tied output projection itself.
            return x, jnp.asarray(embed.embedding, dtype)  # [batch, length, d_model], [vocab, d]
        # [batch, length, vocab], tied to the input embedding (pre-transposed when decoding).
        logits = embed.attend(x) if output_kernel is None else x @ output_kernel.astype(x.dtype)
        logits = logits.astype(jnp.float32)
        if cache is None:
            return logits
        return logits, next_cache(cache, length, input_mask, key_mask, new_layers)


def run_blocks(
    block: type[nn.Module],
    cfg: Any,
    x: Array,
    args: tuple,
    *,
    deterministic: bool,
    cache: dict[str, Any] | None,
    index: Array | None,
) -> tuple[Array, tuple]:
    """The residual stream through cfg.num_layers `block`s named h_0.. (or one scanned stack
    'h'), each called as block(cfg)(x, *args, deterministic=, cache=, cache_index=); returns
    (x, each layer's new cache). Called from a decoder's compact __call__ (GPT, Llama)."""
    if cfg.scan_layers:
        if cache is not None:
            raise ValueError(
                f"A {block.__module__.rpartition('.')[2]} model with scan_layers=True takes no "
                "cache: decode_fns decode with its unscanned clone (ptjax.models.scan.unscanned)."
            )
        stack = layers.scan_stack(block, cfg.remat, cfg.num_layers)
        return stack(cfg, name="h")(x, *args, deterministic=deterministic), ()
    rematted = layers.remat(block, cfg.remat)
    new_layers = []
    for i in range(cfg.num_layers):
        x, layer_cache = rematted(cfg, name=f"h_{i}")(
            x,
            *args,
            deterministic=deterministic,
            cache=None if cache is None else cache["layers"][i],
            cache_index=index,
        )
        new_layers.append(layer_cache)
        x = layers.constrain_batch(x)
    return x, tuple(new_layers)


def cache_mask(
    cache: dict[str, Any], inputs: Array, input_mask: Array | None
) -> tuple[Array, Array, Array, Array]:
    """(write index, input mask, key mask, attention mask [batch, 1, length, max_len]) of a
    decoding call on `inputs` [batch, length] with a cache: the inputs attend causally to
    everything cached and to themselves; `input_mask` (default all True) marks real tokens."""
    index = cache["index"][0]  # Rows decode in lockstep; stored per row for beams.
    if input_mask is None:
        input_mask = jnp.ones(inputs.shape, bool)
    key_mask = jax.lax.dynamic_update_slice(cache["key_mask"], input_mask, (0, index))
    max_len = key_mask.shape[1]
    query_at = index + jnp.arange(inputs.shape[1])
    causal = jnp.arange(max_len)[None, :] <= query_at[:, None]  # [length, max_len]
    return index, input_mask, key_mask, causal[None, None] & key_mask[:, None, None, :]


def next_cache(
    cache: dict[str, Any], length: int, input_mask: Array, key_mask: Array, new_layers: tuple
) -> dict[str, Any]:
    """The cache after a decoding call wrote `length` positions."""
    return {
        "index": cache["index"] + length,
        "next_position": cache["next_position"] + jnp.sum(input_mask, axis=1, dtype=jnp.int32),
        "key_mask": key_mask,
        "layers": new_layers,
    }


def empty_cache(
    num_layers: int, heads: int, head_dim: int, dtype: str, batch: int, max_len: int
) -> dict[str, Any]:
    """An empty decoding cache of `heads` key/value heads for `max_len` positions."""
    kv = (batch, heads, max_len, head_dim)  # Heads first: read in place.
    return {
        "index": jnp.zeros((batch,), jnp.int32),  # Next cache slot to write.
        "next_position": jnp.zeros((batch,), jnp.int32),  # Next position id (real tokens).
        "key_mask": jnp.zeros((batch, max_len), bool),
        "layers": tuple(
            {"key": jnp.zeros(kv, jnp.dtype(dtype)), "value": jnp.zeros(kv, jnp.dtype(dtype))}
            for _ in range(num_layers)
        ),
    }


def init_cache(cfg: GPTConfig, batch: int, max_len: int) -> dict[str, Any]:
    """An empty decoding cache for `max_len` positions (prompt + new tokens)."""
    return empty_cache(cfg.num_layers, cfg.num_heads, cfg.head_dim, cfg.dtype, batch, max_len)


# The output projection [d_model, vocab], laid out once for decoding loops.
DECODE_HEAD = "decode_output_kernel"


def prepare_decode_params(params: Any) -> Any:
    """Adds the output embedding transposed ([d_model, vocab]) for decoding loops, fuses each
    block's query/key/value projections into one (`layers.fuse_qkv_for_decoding`), and gives
    scanned parameters the per-layer layout that decoding with a cache runs.

    Called once before a decoding loop: reading the [vocab, d_model] table transposed at every
    step costs about a third more on CPU than reading a copy laid out for the product.
    """
    params = dict(scan.unstack_layers(params))
    for name in params:
        if name.startswith("h_") and "query" in params[name]["attn"]:
            block = params[name]
            params[name] = {**block, "attn": layers.fuse_qkv_for_decoding(block["attn"])}
    return {**params, DECODE_HEAD: params["wte"]["embedding"].T}


def decode_fns(
    model: nn.Module, max_new_tokens: int, *, init_cache: Callable = init_cache
) -> tuple[Callable, Callable]:
    """(prefill, step) for ptjax.decoding: prompts must be left-padded (mask False on pads).

    Both take the model's parameters, or `prepare_decode_params(params)` for faster steps.
    A model with scan_layers=True decodes as its unscanned clone (the same function), its
    parameters unstacked (best once, by prepare_decode_params, rather than at every step).
    Decoders with GPT's interface (ptjax.models.llama) pass their own `init_cache`.
    """
    model = scan.unscanned(model)

    def split(params: Any) -> tuple[Any, Array | None]:
        params = scan.unstack_layers(params)
        if DECODE_HEAD in params:
            return {k: v for k, v in params.items() if k != DECODE_HEAD}, params[DECODE_HEAD]
        return params, None

    def prefill(params: Any, prompt: Array, prompt_mask: Array) -> tuple[Array, dict]:
        params, head = split(params)
        batch, prompt_len = prompt.shape
        cache = init_cache(model.config, batch, prompt_len + max_new_tokens)
        positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)
        logits, cache = model.apply(
            {"params": params},
            prompt,
            positions,
            cache=cache,
            input_mask=prompt_mask,
            output_kernel=head,
            last_only=True,  # Left-padded: every row's next token follows the last position.
        )
        return logits[:, -1], cache

    def step(params: Any, tokens: Array, cache: dict) -> tuple[Array, dict]:
        params, head = split(params)
        logits, cache = model.apply(
            {"params": params},
            tokens[:, None],
            cache["next_position"][:, None],
            cache=cache,
            output_kernel=head,
        )
        return logits[:, 0], cache

    return prefill, step


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
