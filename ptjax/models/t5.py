"""T5 encoder-decoder (Raffel et al. 2019): RMS norms, relative position buckets, no biases.

Pre-norm blocks (x + f(rms_norm(x))) without dense biases; attention logits are q.k without the
1/sqrt(d) scaling (T5 folds it into the query initialisation) plus a learned bias per (bucketed
relative position, head), computed once per stack and shared by its layers: bidirectional
buckets in the encoder, causal ones in the decoder, none in cross-attention. The input embedding
is shared by both stacks. T5 1.0 ('relu', tied) reads the logits off the embedding after
scaling the decoder output by d_model**-0.5; T5 1.1 / mT5 ('gated-gelu', untied) has a separate
`lm_head` and no scaling. Numerically this matches Hugging Face's `T5ForConditionalGeneration`.

Packing: `*_segment_ids` keep attention (and cross-attention) within one example and
`*_positions` restart at 0 per example, so packed examples see exactly what they would alone.

Parameter names follow t5x more than Hugging Face; `ptjax.interop.hf_t5` converts Hugging Face
checkpoints both ways (the name table is there).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptjax.models import attention, layers, relative_position

Array = jax.Array

# T5 starts every target with the pad id (Hugging Face's decoder_start_token_id).
DECODER_START_ID = 0
FEED_FORWARDS = ("relu", "gated-gelu")


@dataclasses.dataclass(frozen=True)
class T5Config:
    vocab_size: int
    d_model: int
    d_kv: int  # Per-head size; num_heads * d_kv need not equal d_model (v1.1 small: 6 * 64).
    d_ff: int
    num_layers: int  # Encoder layers.
    num_decoder_layers: int
    num_heads: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1  # Embeddings, residuals, FFN inner.
    attention_dropout_rate: float = -1.0  # Of attention probabilities; -1: dropout_rate.
    layer_norm_eps: float = 1e-6
    feed_forward: str = "relu"  # 'relu' (T5 1.0) or 'gated-gelu' (1.1 / mT5, tanh GELU).
    tie_word_embeddings: bool = True  # 1.0: logits = (x * d_model**-0.5) @ shared^T.
    max_len: int = 512  # No position table: only a limit on input and target lengths.
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"  # A key of layers.REMAT_POLICIES, applied to each encoder/decoder layer.
    scan_layers: bool = False  # Each stack's layers as one nn.scan named 'layer' (scan_stack).

    def __post_init__(self):
        if self.feed_forward not in FEED_FORWARDS:
            raise ValueError(
                f"T5Config.feed_forward={self.feed_forward!r}; expected one of {FEED_FORWARDS}."
            )

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv


def _size(layers_: int, d_model: int, heads: int, d_ff: int, v1_1: bool) -> dict[str, Any]:
    return dict(
        vocab_size=32128,
        d_model=d_model,
        d_kv=64,
        d_ff=d_ff,
        num_layers=layers_,
        num_decoder_layers=layers_,
        num_heads=heads,
        feed_forward="gated-gelu" if v1_1 else "relu",
        tie_word_embeddings=not v1_1,
    )


# The published T5 1.0 and 1.1 sizes with the 32128-piece sentencepiece vocabulary (runs override
# vocab_size with their tokenizer's); 'tiny' is for tests.
SIZES = {
    "tiny": dict(
        vocab_size=8000,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
    ),
    # The en->es recipe's size (configs/t5_en_es.py): trains on 2 CPU cores in under an hour.
    "mini": dict(
        vocab_size=8000,
        d_model=128,
        d_kv=32,
        d_ff=512,
        num_layers=3,
        num_decoder_layers=3,
        num_heads=4,
    ),
    # scripts/benchmark.py's size: 4 + 4 layers x 256 wide, as GPT's and BERT's there.
    "bench": dict(
        vocab_size=32000,
        d_model=256,
        d_kv=64,
        d_ff=1024,
        num_layers=4,
        num_decoder_layers=4,
        num_heads=4,
    ),
    "small": _size(6, 512, 8, 2048, v1_1=False),  # 60.5M
    "base": _size(12, 768, 12, 3072, v1_1=False),  # 223M
    "large": _size(24, 1024, 16, 4096, v1_1=False),  # 738M
    "v1_1_small": _size(8, 512, 6, 1024, v1_1=True),  # 77M
    "v1_1_base": _size(12, 768, 12, 2048, v1_1=True),  # 248M
    "v1_1_large": _size(24, 1024, 16, 2816, v1_1=True),  # 783M
}


def _dtypes(cfg: T5Config) -> tuple[jnp.dtype, jnp.dtype]:
    return jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)


class RelativePositionBias(nn.Module):
    """Learned bias per (relative position bucket, head); returns [batch or 1, heads, q, k]."""

    config: T5Config
    bidirectional: bool

    @nn.compact
    def __call__(
        self,
        q_positions: Array,  # [batch or 1, q_len] int
        k_positions: Array,  # [batch or 1, k_len] int
    ) -> Array:
        cfg = self.config
        dtype, param_dtype = _dtypes(cfg)
        buckets = relative_position.relative_position_bucket(
            k_positions[:, None, :] - q_positions[:, :, None],  # [batch, q_len, k_len]
            bidirectional=self.bidirectional,
            num_buckets=cfg.relative_attention_num_buckets,
            max_distance=cfg.relative_attention_max_distance,
        )
        values = nn.Embed(
            cfg.relative_attention_num_buckets,
            cfg.num_heads,
            embedding_init=layers.normal_init(cfg.d_model**-0.5),
            dtype=dtype,
            param_dtype=param_dtype,
            name="relative_attention_bias",
        )(buckets)  # [batch, q_len, k_len, heads]
        return jnp.transpose(values, (0, 3, 1, 2))


class RMSNorm(nn.Module):
    """T5's LayerNorm: x / rms(x) * scale in float32; no mean subtraction, no bias."""

    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
        return (x * scale.astype(jnp.float32)).astype(self.dtype)


def _norm(cfg: T5Config, name: str) -> RMSNorm:
    dtype, param_dtype = _dtypes(cfg)
    return RMSNorm(cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, name=name)


class Attention(nn.Module):
    """Multi-head attention without biases or 1/sqrt(d) scaling (Mesh TF's init instead).

    Self-attention projects keys and values from `inputs_kv`; with a `cache` ({'key', 'value'}:
    [batch, heads, max_len, d_kv]) they are written at `cache_index` and the queries attend over
    the whole cache. Cross-attention while decoding passes `kv` (keys and values projected once
    from the encoder output, [batch, heads, src_len, d_kv]) instead of `inputs_kv`. Returns
    (output, the keys and values used, heads first as the caches hold them).
    """

    config: T5Config

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,  # [batch, q_len, d_model]
        inputs_kv: Array | None,  # [batch, kv_len, d_model]
        mask: Array | attention.Mask | None,  # dense: [batch or 1, 1, q_len, kv_len] bool
        bias: Array | None,  # [batch or 1, heads, q_len, kv_len]
        *,
        deterministic: bool,
        cache: dict[str, Array] | None = None,
        cache_index: Array | None = None,
        kv: dict[str, Array] | None = None,
    ) -> tuple[Array, dict[str, Array]]:
        cfg = self.config
        dtype, param_dtype = _dtypes(cfg)

        def proj(name: str, stddev: float) -> layers.Dense:
            return layers.Dense(
                (cfg.num_heads, cfg.d_kv),
                use_bias=False,
                kernel_init=layers.normal_init(stddev),
                dtype=dtype,
                param_dtype=param_dtype,
                name=name,
            )

        heads_first = kv is not None or cache is not None
        if self.has_variable("params", layers.FUSED_QKV):  # Decoding params, self-attention.
            query, key, value = layers.fused_qkv(
                inputs_q,
                cfg.num_heads,
                cfg.d_kv,
                use_bias=False,
                dtype=dtype,
                param_dtype=param_dtype,
            )
        else:
            query = proj("query", (cfg.d_model * cfg.d_kv) ** -0.5)(inputs_q)  # [b, q, h, d_kv]
            if kv is None:
                key = proj("key", cfg.d_model**-0.5)(inputs_kv)  # [batch, kv_len, heads, d_kv]
                value = proj("value", cfg.d_model**-0.5)(inputs_kv)
            else:
                key, value = kv["key"], kv["value"]  # [batch, heads, kv_len, d_kv]
        if cache is not None:
            key, value = layers.write_cache(cache, key, value, cache_index)
        dropout_rate = layers.attention_dropout_rate(cfg)
        dropout_rng = None
        if not deterministic and dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        out = layers.dot_product_attention(
            query,
            key,
            value,
            mask,
            bias,
            kv_heads_first=heads_first,
            scale=1.0,
            dropout_rate=dropout_rate,
            dropout_rng=dropout_rng,
            deterministic=deterministic,
            dtype=dtype,
            where=f"T5 {self.name}",
        )  # [batch, q_len, heads, d_kv]
        out = layers.Dense(
            cfg.d_model,
            axis=(-2, -1),
            use_bias=False,
            kernel_init=layers.normal_init(cfg.inner_dim**-0.5),
            dtype=dtype,
            param_dtype=param_dtype,
            name="out",
        )(out)  # [batch, q_len, d_model]
        if not heads_first:  # Unused (and not computed) unless a decoding cache keeps them.
            key, value = layers.heads_first(key), layers.heads_first(value)
        return out, {"key": key, "value": value}


class GatedMlp(nn.Module):
    """T5 1.1's FFN: (gelu_tanh(x @ wi_0) * (x @ wi_1)) -> dropout -> wo, no biases."""

    config: T5Config

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool) -> Array:
        cfg = self.config
        dtype, param_dtype = _dtypes(cfg)

        def dense(features: int, stddev: float, name: str) -> layers.Dense:
            return layers.Dense(
                features,
                use_bias=False,
                kernel_init=layers.normal_init(stddev),
                dtype=dtype,
                param_dtype=param_dtype,
                name=name,
            )

        gate = nn.gelu(dense(cfg.d_ff, cfg.d_model**-0.5, "wi_0")(x), approximate=True)
        h = gate * dense(cfg.d_ff, cfg.d_model**-0.5, "wi_1")(x)  # [batch, length, d_ff]
        h = layers.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        return dense(cfg.d_model, cfg.d_ff**-0.5, "wo")(h)


def _mlp(cfg: T5Config) -> nn.Module:
    if cfg.feed_forward == "gated-gelu":
        return GatedMlp(cfg, name="mlp")
    dtype, param_dtype = _dtypes(cfg)
    return layers.MlpBlock(
        d_ff=cfg.d_ff,
        activation=nn.relu,
        dropout_rate=cfg.dropout_rate,
        use_bias=False,
        kernel_init=layers.normal_init(cfg.d_model**-0.5),
        out_kernel_init=layers.normal_init(cfg.d_ff**-0.5),
        dtype=dtype,
        param_dtype=param_dtype,
        name="mlp",
    )


class EncoderLayer(nn.Module):
    """x + attn(norm(x)); x + mlp(norm(x)), dropout on each branch."""

    config: T5Config

    @nn.compact
    def __call__(
        self, x: Array, mask: attention.Mask, bias: Array, *, deterministic: bool
    ) -> Array:
        cfg = self.config
        dropout = layers.Dropout(cfg.dropout_rate)
        h = _norm(cfg, "self_attention_ln")(x)
        h, _ = Attention(cfg, name="self_attention")(h, h, mask, bias, deterministic=deterministic)
        x = x + dropout(h, deterministic=deterministic)
        h = _mlp(cfg)(_norm(cfg, "mlp_ln")(x), deterministic=deterministic)
        return x + dropout(h, deterministic=deterministic)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder, then the FFN; all pre-norm."""

    config: T5Config

    @nn.compact
    def __call__(
        self,
        x: Array,  # [batch, tgt_len, d_model]
        encoded: Array | None,  # [batch, src_len, d_model]; None: cross keys/values in `cross`
        self_mask: Array | attention.Mask,
        cross_mask: Array | attention.Mask | None,
        bias: Array,
        *,
        deterministic: bool,
        cache: dict[str, Array] | None = None,
        cache_index: Array | None = None,
        cross: dict[str, Array] | None = None,
    ) -> tuple[Array, dict[str, Array], dict[str, Array]]:
        """Returns (x, self-attention keys/values, cross-attention keys/values)."""
        cfg = self.config
        dropout = layers.Dropout(cfg.dropout_rate)
        h = _norm(cfg, "self_attention_ln")(x)
        h, self_kv = Attention(cfg, name="self_attention")(
            h,
            h,
            self_mask,
            bias,
            deterministic=deterministic,
            cache=cache,
            cache_index=cache_index,
        )
        x = x + dropout(h, deterministic=deterministic)
        h = _norm(cfg, "cross_attention_ln")(x)
        h, cross = Attention(cfg, name="cross_attention")(
            h, encoded, cross_mask, None, deterministic=deterministic, kv=cross
        )
        x = x + dropout(h, deterministic=deterministic)
        h = _mlp(cfg)(_norm(cfg, "mlp_ln")(x), deterministic=deterministic)
        return x + dropout(h, deterministic=deterministic), self_kv, cross


class Encoder(nn.Module):
    """Embedded inputs -> `num_layers` bidirectional layers -> final norm; [b, src, d_model]."""

    config: T5Config

    @nn.compact
    def __call__(
        self,
        x: Array,  # [batch, src_len, d_model], embedded tokens
        mask: attention.Mask,
        positions: Array,  # [batch or 1, src_len] int
        *,
        deterministic: bool,
    ) -> Array:
        cfg = self.config
        dropout = layers.Dropout(cfg.dropout_rate)
        # Computed once, shared by every layer (HF keeps the table in the first block).
        bias = RelativePositionBias(cfg, bidirectional=True, name="relative_position")(
            positions, positions
        )
        x = dropout(x, deterministic=deterministic)
        if cfg.scan_layers:
            stack = layers.scan_stack(EncoderLayer, cfg.remat, cfg.num_layers)
            x = stack(cfg, name="layer")(x, mask, bias, deterministic=deterministic)
        else:
            layer = layers.remat(EncoderLayer, cfg.remat)
            for i in range(cfg.num_layers):
                x = layer(cfg, name=f"layer_{i}")(x, mask, bias, deterministic=deterministic)
                x = layers.constrain_batch(x)
        x = _norm(cfg, "final_ln")(x)
        return dropout(x, deterministic=deterministic)


class Decoder(nn.Module):
    """Embedded targets -> `num_decoder_layers` causal layers -> final norm.

    Returns (hidden [batch, tgt_len, d_model], per-layer self keys/values, per-layer cross
    keys/values); with `cache` the self keys/values are the updated cache entries.
    """

    config: T5Config

    @nn.compact
    def __call__(
        self,
        x: Array,  # [batch, tgt_len, d_model], embedded tokens
        encoded: Array | None,  # [batch, src_len, d_model]; None: use `cross`
        self_mask: Array | attention.Mask,  # dense (with a cache): [batch or 1, 1, tgt, kv] bool
        cross_mask: Array | attention.Mask | None,  # dense: [batch, 1, tgt_len, src_len] bool
        q_positions: Array,  # [batch or 1, tgt_len] int
        k_positions: Array,  # [batch or 1, kv_len] int
        *,
        deterministic: bool,
        cache: tuple[dict[str, Array], ...] | None = None,
        cache_index: Array | None = None,
        cross: tuple[dict[str, Array], ...] | None = None,
    ) -> tuple[Array, tuple, tuple]:
        cfg = self.config
        dropout = layers.Dropout(cfg.dropout_rate)
        bias = RelativePositionBias(cfg, bidirectional=False, name="relative_position")(
            q_positions, k_positions
        )
        x = dropout(x, deterministic=deterministic)
        self_kvs, cross_kvs = [], []
        if cfg.scan_layers:
            if cache is not None or cross is not None:
                raise ValueError(
                    "A T5 with scan_layers=True takes no cache: decode_fns decode with its "
                    "unscanned clone (ptjax.models.scan.unscanned)."
                )
            stack = layers.scan_stack(DecoderLayer, cfg.remat, cfg.num_decoder_layers)
            x = stack(cfg, name="layer")(
                x, encoded, self_mask, cross_mask, bias, deterministic=deterministic
            )
        else:
            layer = layers.remat(DecoderLayer, cfg.remat)
            for i in range(cfg.num_decoder_layers):
                x, self_kv, cross_kv = layer(cfg, name=f"layer_{i}")(
                    x,
                    encoded,
                    self_mask,
                    cross_mask,
                    bias,
                    deterministic=deterministic,
                    cache=None if cache is None else cache[i],
                    cache_index=cache_index,
                    cross=None if cross is None else cross[i],
                )
                x = layers.constrain_batch(x)
                self_kvs.append(self_kv)
                cross_kvs.append(cross_kv)
        x = _norm(cfg, "final_ln")(x)
        return dropout(x, deterministic=deterministic), tuple(self_kvs), tuple(cross_kvs)


def _key_mask(mask: Array | None) -> Array | None:
    """[batch, kv_len] 1/True on real tokens -> [batch, 1, 1, kv_len] bool."""
    return None if mask is None else mask.astype(bool)[:, None, None, :]


def _positions(positions: Array | None, length: int) -> Array:
    return jnp.arange(length)[None] if positions is None else positions


class T5(nn.Module):
    """Encoder-decoder; `__call__` returns logits [batch, tgt_len, vocab] in float32.

    Masks are explicit ([batch, len], 1/True on real tokens; None: all real): a pad id in the
    tokens means nothing by itself. `encode` and `decode` are the two halves, for
    `model.apply(..., method=...)`; `decode` with a `cache` (from `init_cache`, see
    `decode_fns`) decodes incrementally and returns (logits, new cache).
    """

    config: T5Config

    def setup(self):
        cfg = self.config
        dtype, param_dtype = _dtypes(cfg)
        self.shared = nn.Embed(
            cfg.vocab_size,
            cfg.d_model,
            embedding_init=layers.normal_init(1.0),
            dtype=dtype,
            param_dtype=param_dtype,
        )
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = layers.Dense(
                cfg.vocab_size,
                use_bias=False,
                kernel_init=layers.normal_init(cfg.d_model**-0.5),
                dtype=dtype,
                param_dtype=param_dtype,
            )

    def _check_length(self, length: int, what: str) -> None:
        if length > self.config.max_len:
            raise ValueError(
                f"{what} length {length} exceeds T5Config.max_len={self.config.max_len}; "
                "shorten the inputs or raise max_len."
            )

    def encode(
        self,
        encoder_input_tokens: Array,  # [batch, src_len] int
        encoder_mask: Array | None = None,  # [batch, src_len]
        *,
        encoder_segment_ids: Array | None = None,  # [batch, src_len]; packed examples
        encoder_positions: Array | None = None,  # [batch, src_len]; default 0..src_len-1
        deterministic: bool = True,
    ) -> Array:
        """Encoder output [batch, src_len, d_model] (padding positions are meaningless)."""
        src_len = encoder_input_tokens.shape[1]
        self._check_length(src_len, "Encoder input")
        mask = attention.Mask(encoder_segment_ids, encoder_segment_ids, encoder_mask)
        return self.encoder(
            self.shared(encoder_input_tokens),
            mask,
            _positions(encoder_positions, src_len),
            deterministic=deterministic,
        )

    def decode(
        self,
        encoded: Array | None,  # [batch, src_len, d_model]; None when decoding from a cache
        decoder_input_tokens: Array,  # [batch, tgt_len] int, starting with DECODER_START_ID
        encoder_mask: Array | None = None,  # [batch, src_len]
        decoder_mask: Array | None = None,  # [batch, tgt_len]
        *,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        decoder_positions: Array | None = None,
        deterministic: bool = True,
        cache: dict[str, Any] | None = None,
        return_hidden: bool = False,
        output_kernel: Array | None = None,  # [d_model, vocab]: shared transposed, to decode
    ) -> Array | tuple[Array, Any]:
        """Logits [batch, tgt_len, vocab] float32 (and the new cache when given one).

        With `return_hidden` (no cache) it returns (hidden [batch, tgt_len, d_model], output
        matrix [vocab, d_model]) whose product is the logits (the tied head's d_model^-0.5 scale
        applied to the hidden states), for `losses.output_cross_entropy`.

        With a cache, `decoder_input_tokens` are written after what it holds (rows move in
        lockstep, no target padding, no packing). Given `encoded` (prefill), the cross-attention
        keys and values are projected and stored with `encoder_mask`; without (a step), the stored
        ones are used.
        """
        cfg = self.config
        tgt_len = decoder_input_tokens.shape[1]
        index, cross = None, None
        if cache is None:
            self._check_length(tgt_len, "Decoder input")
            self_mask = attention.Mask(
                decoder_segment_ids, decoder_segment_ids, decoder_mask, causal=True
            )
            packed = decoder_segment_ids is not None and encoder_segment_ids is not None
            cross_mask = attention.Mask(
                decoder_segment_ids if packed else None,
                encoder_segment_ids if packed else None,
                encoder_mask,
            )
            q_positions = k_positions = _positions(decoder_positions, tgt_len)
            layer_cache = None
        else:
            index = cache["index"][0]  # Rows decode in lockstep; stored per row for beams.
            if encoded is None:
                encoder_mask, cross = cache["encoder_mask"], cache["cross"]
            layer_cache = cache["layers"]
            max_len = layer_cache[0]["key"].shape[2]
            self._check_length(max_len, "Decoder cache")
            q_positions = (index + jnp.arange(tgt_len))[None]  # [1, tgt_len]
            k_positions = jnp.arange(max_len)[None]  # [1, max_len]
            self_mask = (k_positions[0][None, :] <= q_positions[0][:, None])[None, None]
            cross_mask = _key_mask(encoder_mask)
        x, self_kvs, cross_kvs = self.decoder(
            self.shared(decoder_input_tokens),
            encoded,
            self_mask,
            cross_mask,
            q_positions,
            k_positions,
            deterministic=deterministic,
            cache=layer_cache,
            cache_index=index,
            cross=cross,
        )  # [batch, tgt_len, d_model]
        if return_hidden and cache is None:
            if cfg.tie_word_embeddings:
                return x * cfg.d_model**-0.5, jnp.asarray(self.shared.embedding, x.dtype)
            kernel = self.lm_head.variables["params"]["kernel"]  # [d_model, vocab]
            return x, jnp.asarray(kernel, x.dtype).T
        if cfg.tie_word_embeddings and output_kernel is not None:  # Laid out for the product.
            logits = (x * cfg.d_model**-0.5) @ output_kernel.astype(x.dtype)
        elif cfg.tie_word_embeddings:
            logits = self.shared.attend(x * cfg.d_model**-0.5)
        else:
            logits = self.lm_head(x)
        logits = logits.astype(jnp.float32)  # [batch, tgt_len, vocab]
        if cache is None:
            return logits
        batch = decoder_input_tokens.shape[0]
        new_cache = {
            "index": cache["index"] + tgt_len,
            "layers": self_kvs,
            "encoder_mask": jnp.broadcast_to(
                jnp.ones((), bool) if encoder_mask is None else encoder_mask.astype(bool),
                (batch, cross_kvs[0]["key"].shape[2]),
            ),
            "cross": cross_kvs,
        }
        return logits, new_cache

    def __call__(
        self,
        encoder_input_tokens: Array,  # [batch, src_len] int
        decoder_input_tokens: Array,  # [batch, tgt_len] int: targets shifted right after 0
        encoder_mask: Array | None = None,  # [batch, src_len] 1/True on real tokens
        decoder_mask: Array | None = None,  # [batch, tgt_len] 1/True on real tokens
        *,
        encoder_segment_ids: Array | None = None,  # [batch, src_len]
        decoder_segment_ids: Array | None = None,  # [batch, tgt_len]
        encoder_positions: Array | None = None,  # [batch, src_len]
        decoder_positions: Array | None = None,  # [batch, tgt_len]
        deterministic: bool = True,
        return_hidden: bool = False,  # (hidden, output matrix) instead of logits; see decode.
    ) -> Array | tuple[Array, Array]:
        encoded = self.encode(
            encoder_input_tokens,
            encoder_mask,
            encoder_segment_ids=encoder_segment_ids,
            encoder_positions=encoder_positions,
            deterministic=deterministic,
        )
        return self.decode(
            encoded,
            decoder_input_tokens,
            encoder_mask,
            decoder_mask,
            encoder_segment_ids=encoder_segment_ids,
            decoder_segment_ids=decoder_segment_ids,
            decoder_positions=decoder_positions,
            deterministic=deterministic,
            return_hidden=return_hidden,
        )


def flops_per_token(cfg: T5Config, src_len: int, tgt_len: int) -> float:
    """Training FLOPs (forward + backward = 3x forward) of one example per target token.

    Matmul parameters count 6 FLOPs per token they touch: encoder layers per input token;
    decoder self-attention, cross-attention queries/outputs, FFN and the output projection per
    target token; cross-attention keys/values per input token (projected once per decoder layer).
    Attention scores and values count 12 * layers * kv_len * (heads * d_kv) per query token,
    halved for causal decoder self-attention. Embedding look-ups, norms and the relative bias are
    left out. The example's total is divided by tgt_len (the tokens a seq2seq loss counts).
    """
    d, inner = cfg.d_model, cfg.inner_dim
    ffn = (3 if cfg.feed_forward == "gated-gelu" else 2) * d * cfg.d_ff
    enc_layer = 4 * d * inner + ffn
    dec_layer = 4 * d * inner + 2 * d * inner + ffn  # Self-attention, cross q/o, FFN.
    encoder = src_len * (
        6.0 * cfg.num_layers * enc_layer
        + 6.0 * cfg.num_decoder_layers * 2 * d * inner  # Cross-attention keys and values.
        + 12.0 * cfg.num_layers * src_len * inner
    )
    decoder = tgt_len * (
        6.0 * (cfg.num_decoder_layers * dec_layer + cfg.vocab_size * d)
        + 6.0 * cfg.num_decoder_layers * tgt_len * inner
        + 12.0 * cfg.num_decoder_layers * src_len * inner
    )
    return (encoder + decoder) / tgt_len
