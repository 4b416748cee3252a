"""BERT encoder (Devlin et al. 2018): post-LN blocks, exact GELU, three summed embeddings.

`Bert` returns the hidden states and the pooled [CLS] vector; heads (`MlmHead`,
`ClassificationHead`, `SpanHead`) sit on top, and `BertForPretraining`, `BertForClassification`,
`BertForQuestionAnswering` combine the two under the names `bert` and `mlm`/`classification`/`span`,
so an encoder checkpoint restores as the `bert` subtree under any head. `pre_ln=True` switches the
blocks to pre-LayerNorm (x + f(ln(x))) and adds a final LayerNorm, for more stable training of
deep models; it is not weight-compatible with published BERT checkpoints.

Parameter names follow Hugging Face's `BertModel` closely; `ptjax.interop.hf_bert` converts
Hugging Face checkpoints both ways (the name table is there).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from ptjax.models import attention, layers

Array = jax.Array


# Control pieces of a ptjax BERT tokenizer, at ids 4, 5, 6 (see ptjax.data.mlm).
CONTROL_SYMBOLS = ("[CLS]", "[SEP]", "[MASK]")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    max_len: int
    num_layers: int
    num_heads: int
    d_model: int
    d_ff: int
    dropout_rate: float = 0.1  # Hidden dropout, as BERT's 0.1.
    attention_dropout_rate: float = -1.0  # Of attention probabilities; -1: dropout_rate.
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pre_ln: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"  # A key of layers.REMAT_POLICIES, applied to each EncoderBlock.
    scan_layers: bool = False  # The blocks as one nn.scan named 'layer' (layers.scan_stack).

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


def _size(num_layers: int, d_model: int, num_heads: int) -> dict[str, int]:
    return dict(
        vocab_size=30522,
        max_len=512,
        num_layers=num_layers,
        num_heads=num_heads,
        d_model=d_model,
        d_ff=4 * d_model,
    )


# Google's BERT miniatures (tiny/mini/small) and the paper's base/large, with the uncased
# WordPiece vocabulary (30522) and 512 positions; runs override vocab_size with their tokenizer's.
SIZES = {
    "tiny": _size(2, 128, 2),
    "mini": _size(4, 256, 4),
    "small": _size(4, 512, 8),
    "base": _size(12, 768, 12),
    "large": _size(24, 1024, 16),
}


@flax.struct.dataclass
class BertOutput:
    hidden_states: Array  # [batch, length, d_model]
    pooled: Array  # [batch, d_model], tanh(dense(hidden_states[:, 0]))


def _dtypes(cfg: BertConfig) -> tuple[jnp.dtype, jnp.dtype]:
    return jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)


def _layer_norm(cfg: BertConfig, name: str) -> nn.LayerNorm:
    dtype, param_dtype = _dtypes(cfg)
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, name=name)


def _dense(cfg: BertConfig, features: int, name: str) -> layers.Dense:
    dtype, param_dtype = _dtypes(cfg)
    return layers.Dense(
        features,
        kernel_init=layers.normal_init(0.02),
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def _gelu(x: Array) -> Array:
    return nn.gelu(x, approximate=False)  # BERT's exact erf GELU.


class BertEmbeddings(nn.Module):
    """Sum of word, position and token-type embeddings, then LayerNorm and dropout."""

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids: Array,  # [batch, length] int
        token_type_ids: Array,  # [batch, length] int
        position_ids: Array,  # [batch, length] int
        *,
        deterministic: bool,
    ) -> Array:
        cfg = self.config
        dtype, param_dtype = _dtypes(cfg)

        def embed(num: int, name: str) -> nn.Embed:
            return nn.Embed(
                num,
                cfg.d_model,
                embedding_init=layers.normal_init(0.02),
                dtype=dtype,
                param_dtype=param_dtype,
                name=name,
            )

        x = (
            embed(cfg.vocab_size, "word_embeddings")(input_ids)
            + embed(cfg.max_len, "position_embeddings")(position_ids)
            + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
        )  # [batch, length, d_model]
        x = _layer_norm(cfg, "layer_norm")(x)
        return layers.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class EncoderBlock(nn.Module):
    """Post-LN: x = ln(x + attn(x)); x = ln(x + mlp(x)). Pre-LN: x + attn(ln(x)); x + mlp(ln(x))."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: Array, mask: attention.Mask, *, deterministic: bool) -> Array:
        cfg = self.config
        dtype, param_dtype = _dtypes(cfg)
        attention_ln = _layer_norm(cfg, "attention_ln")
        output_ln = _layer_norm(cfg, "output_ln")
        dropout = layers.Dropout(cfg.dropout_rate)

        h = attention_ln(x) if cfg.pre_ln else x
        h, _ = layers.MultiHeadAttention(
            num_heads=cfg.num_heads,
            head_dim=cfg.head_dim,
            dropout_rate=layers.attention_dropout_rate(cfg),
            dtype=dtype,
            param_dtype=param_dtype,
            name="attention",
            where="BERT self-attention",
        )(h, h, mask, deterministic=deterministic)  # [batch, length, d_model]
        x = x + dropout(h, deterministic=deterministic)
        if not cfg.pre_ln:
            x = attention_ln(x)

        h = output_ln(x) if cfg.pre_ln else x
        h = layers.MlpBlock(
            d_ff=cfg.d_ff,
            activation=_gelu,
            dropout_rate=0.0,  # BERT has no dropout between the two dense layers.
            dtype=dtype,
            param_dtype=param_dtype,
            name="mlp",
        )(h, deterministic=deterministic)
        x = x + dropout(h, deterministic=deterministic)
        return x if cfg.pre_ln else output_ln(x)


class Bert(nn.Module):
    """The encoder: embeddings, `num_layers` blocks (bidirectional attention), pooler."""

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids: Array,  # [batch, length] int
        token_type_ids: Array | None = None,  # [batch, length]; default all 0 (segment A)
        attention_mask: Array | None = None,  # [batch, length]; 1/True on real tokens
        position_ids: Array | None = None,  # [batch, length]; default 0..length-1
        *,
        deterministic: bool = True,
    ) -> BertOutput:
        cfg = self.config
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        mask = attention.Mask(kv_valid=attention_mask)  # Bidirectional; padding keys masked.

        x = BertEmbeddings(cfg, name="embeddings")(
            input_ids, token_type_ids, position_ids, deterministic=deterministic
        )  # [batch, length, d_model]
        if cfg.scan_layers:
            stack = layers.scan_stack(EncoderBlock, cfg.remat, cfg.num_layers)
            x = stack(cfg, name="layer")(x, mask, deterministic=deterministic)
        else:
            block = layers.remat(EncoderBlock, cfg.remat)
            for i in range(cfg.num_layers):
                x = block(cfg, name=f"layer_{i}")(x, mask, deterministic=deterministic)
                x = layers.constrain_batch(x)
        if cfg.pre_ln:
            x = _layer_norm(cfg, "final_ln")(x)
        pooled = jnp.tanh(_dense(cfg, cfg.d_model, "pooler")(x[:, 0]))  # [batch, d_model]
        return BertOutput(hidden_states=x, pooled=pooled)


class MlmHead(nn.Module):
    """Masked-LM logits: dense + GELU + LayerNorm, then the tied word embeddings plus a bias."""

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        hidden_states: Array,  # [batch, n, d_model]
        word_embeddings: Array,  # [vocab, d_model], the encoder's input table
    ) -> Array:
        cfg = self.config
        dtype, param_dtype = _dtypes(cfg)
        h = _gelu(_dense(cfg, cfg.d_model, "transform")(hidden_states))
        h = _layer_norm(cfg, "transform_ln")(h)
        bias = self.param("output_bias", nn.initializers.zeros, (cfg.vocab_size,), param_dtype)
        logits = jnp.einsum("bnd,vd->bnv", h, word_embeddings.astype(dtype))  # [batch, n, vocab]
        return logits.astype(jnp.float32) + bias.astype(jnp.float32)


class ClassificationHead(nn.Module):
    """Sequence-classification logits [batch, num_labels] (float32): dropout + dense on pooled."""

    config: BertConfig
    num_labels: int

    @nn.compact
    def __call__(self, pooled: Array, *, deterministic: bool = True) -> Array:
        h = layers.Dropout(self.config.dropout_rate)(pooled, deterministic=deterministic)
        return _dense(self.config, self.num_labels, "classifier")(h).astype(jnp.float32)


class SpanHead(nn.Module):
    """Extractive-QA logits: (start, end), each [batch, length] float32; masked positions -1e9."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden_states: Array, mask: Array | None = None) -> tuple[Array, Array]:
        logits = _dense(self.config, 2, "qa_outputs")(hidden_states).astype(jnp.float32)
        start, end = logits[..., 0], logits[..., 1]  # [batch, length] each
        if mask is not None:
            start = jnp.where(mask, start, layers.NEG_INF)
            end = jnp.where(mask, end, layers.NEG_INF)
        return start, end


class BertForPretraining(nn.Module):
    """Encoder + MLM head; returns logits [batch, length, vocab] float32 (no next-sentence head).

    With `mlm_positions` [batch, num_predictions], only those positions are projected onto the
    vocabulary (original BERT's gather), giving [batch, num_predictions, vocab].
    """

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        token_type_ids: Array | None = None,
        attention_mask: Array | None = None,
        position_ids: Array | None = None,
        *,
        mlm_positions: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        bert = Bert(self.config, name="bert")
        out = bert(
            input_ids, token_type_ids, attention_mask, position_ids, deterministic=deterministic
        )
        h = out.hidden_states  # [batch, length, d_model]
        if mlm_positions is not None:
            h = jnp.take_along_axis(h, mlm_positions[..., None], axis=1)  # [batch, n, d_model]
        table = bert.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
        return MlmHead(self.config, name="mlm")(h, table)


class BertForClassification(nn.Module):
    """Encoder + `ClassificationHead`; returns logits [batch, num_labels] float32."""

    config: BertConfig
    num_labels: int

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        token_type_ids: Array | None = None,
        attention_mask: Array | None = None,
        *,
        deterministic: bool = True,
    ) -> Array:
        out = Bert(self.config, name="bert")(
            input_ids, token_type_ids, attention_mask, deterministic=deterministic
        )
        return ClassificationHead(self.config, self.num_labels, name="classification")(
            out.pooled, deterministic=deterministic
        )


class BertForQuestionAnswering(nn.Module):
    """Encoder + `SpanHead`; returns (start, end) logits [batch, length] float32, pads -1e9."""

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        token_type_ids: Array | None = None,
        attention_mask: Array | None = None,
        *,
        deterministic: bool = True,
    ) -> tuple[Array, Array]:
        out = Bert(self.config, name="bert")(
            input_ids, token_type_ids, attention_mask, deterministic=deterministic
        )
        return SpanHead(self.config, name="span")(out.hidden_states, attention_mask)


def flops_per_token(cfg: BertConfig, seq_len: int, predicted_fraction: float = 1.0) -> float:
    """Training FLOPs per token (forward + backward = 3x forward) for MLM pretraining.

    Matmul parameters count 6 FLOPs each: the blocks, and the MLM head's transform and tied
    vocabulary projection at `predicted_fraction` of the positions (1.0: every position, an
    upper bound; ptjax's masked_lm projects only the masked ones, about 0.15). Bidirectional
    attention's score and value matmuls count in full: 12 * layers * seq_len * d_model.
    Embedding look-ups and the pooler (once per sequence) are left out.
    """
    block = cfg.num_layers * (4 * cfg.d_model * cfg.d_model + 2 * cfg.d_model * cfg.d_ff)
    head = predicted_fraction * (cfg.d_model * cfg.d_model + cfg.vocab_size * cfg.d_model)
    attention = 12 * cfg.num_layers * seq_len * cfg.d_model
    return 6.0 * (block + head) + attention
