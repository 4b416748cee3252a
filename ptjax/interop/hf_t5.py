"""T5 <-> Hugging Face `T5ForConditionalGeneration`, v1.0 and v1.1 (and mT5-style gated models).

| Hugging Face name                                       | ptjax path                         |
| ------------------------------------------------------- | ---------------------------------- |
| shared.weight [V, d] (= {en,de}coder.embed_tokens)      | shared/embedding                   |
| {s}.block.0.layer.0.SelfAttention.relative_attention_   | {s}/relative_position/             |
|   bias.weight [buckets, heads]                          |   relative_attention_bias/embedding|
| {s}.block.i.layer.0.SelfAttention.{q,k,v}.weight        | {s}/layer_i/self_attention/        |
|   [h * d_kv, d]                                         |   {query,key,value}/kernel [d,h,dk]|
| {s}.block.i.layer.0.SelfAttention.o.weight [d, h * dk]  | .../self_attention/out/kernel      |
|                                                         |   [h, dk, d]                       |
| {s}.block.i.layer.0.layer_norm.weight                   | {s}/layer_i/self_attention_ln/scale|
| decoder.block.i.layer.1.EncDecAttention.{q,k,v,o}       | decoder/layer_i/cross_attention/.. |
| decoder.block.i.layer.1.layer_norm.weight               | decoder/layer_i/cross_attention_ln |
| {s}.block.i.layer.-1.DenseReluDense.{wi,wo}.weight      | {s}/layer_i/mlp/{wi,wo}/kernel (.T)|
|   (gated: wi_0, wi_1, wo)                               |   (gated: wi_0, wi_1, wo)          |
| {s}.block.i.layer.-1.layer_norm.weight                  | {s}/layer_i/mlp_ln/scale           |
| {s}.final_layer_norm.weight                             | {s}/final_ln/scale                 |
| lm_head.weight [V, d]                                   | v1.1: lm_head/kernel [d, V];       |
|                                                         | v1.0: tied, must equal shared      |

where {s} is `encoder` or `decoder` and layer.-1 is layer.1 in the encoder, layer.2 in the
decoder. The output layer: T5 1.0 reads the logits off `shared` after scaling the decoder output
by d_model**-0.5; 1.1 has its own `lm_head` and no scaling. transformers 5 writes this as
`scale_decoder_outputs` (and always `tie_word_embeddings: true`); older config.json files say
`tie_word_embeddings: false` for 1.1. ptjax's `T5Config.tie_word_embeddings` is the scaling
(and the tied table): a 1.1 checkpoint whose lm_head is the shared table gets a copy of it.
"""

from __future__ import annotations

from collections.abc import Mapping as MappingType
from typing import Any

from ptjax.interop import tensor_map as tm
from ptjax.models import t5

MODEL_TYPE = "t5"
FAMILY = "t5"
ARCHITECTURES = {"T5ForConditionalGeneration": ("seq2seq", None)}
_FEED_FORWARD = {"relu": "relu", "gated-gelu": "gated-gelu", "gated-gelu_new": "gated-gelu"}


def scales_output(hf: dict[str, Any]) -> bool:
    """Whether the decoder output is scaled by d_model**-0.5 (T5 1.0), per config.json."""
    if "scale_decoder_outputs" in hf:
        return bool(hf["scale_decoder_outputs"])
    return hf.get("tie_word_embeddings", True) is not False


def model_config(hf: dict[str, Any]) -> t5.T5Config:
    """ptjax's T5Config of an HF T5 config.json; features ptjax lacks are errors."""
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in _FEED_FORWARD:
        raise tm.ConversionError(
            f"config.json feed_forward_proj={proj!r}: ptjax's T5 supports {sorted(_FEED_FORWARD)}."
        )
    return t5.T5Config(
        vocab_size=hf["vocab_size"],
        d_model=hf["d_model"],
        d_kv=hf["d_kv"],
        d_ff=hf["d_ff"],
        num_layers=hf["num_layers"],
        num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        num_heads=hf["num_heads"],
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        dropout_rate=float(hf.get("dropout_rate", 0.1)),
        layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)),
        feed_forward=_FEED_FORWARD[proj],
        tie_word_embeddings=scales_output(hf),
        max_len=hf.get("n_positions", 512),
    )


def architecture(hf: dict[str, Any]) -> str:
    names = hf.get("architectures") or ["T5ForConditionalGeneration"]
    if names[0] not in ARCHITECTURES:
        raise tm.ConversionError(
            f"config.json architectures={names}: ptjax converts {sorted(ARCHITECTURES)}."
        )
    return names[0]


def mapping(cfg: t5.T5Config) -> tm.Mapping:
    d, h, dk, V, F = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.vocab_size, cfg.d_ff

    def attention(hf: str, at: tm.Path) -> list[tm.Rule]:
        heads_in = [
            tm.transposed(f"{hf}.{x}.weight", (h * dk, d), (*at, name, "kernel"), (d, h, dk))
            for x, name in (("q", "query"), ("k", "key"), ("v", "value"))
        ]
        out = tm.transposed(f"{hf}.o.weight", (d, h * dk), (*at, "out", "kernel"), (h, dk, d))
        return [*heads_in, out]

    def mlp(hf: str, at: tm.Path) -> list[tm.Rule]:
        wi = ("wi_0", "wi_1") if cfg.feed_forward == "gated-gelu" else ("wi",)
        rules = [tm.transposed(f"{hf}.{w}.weight", (F, d), (*at, w, "kernel")) for w in wi]
        return [*rules, tm.transposed(f"{hf}.wo.weight", (d, F), (*at, "wo", "kernel"))]

    def norm(hf: str, at: tm.Path) -> tm.Rule:
        return tm.same(f"{hf}.weight", (d,), (*at, "scale"))

    rules = [tm.same("shared.weight", (V, d), ("shared", "embedding"))]
    for stack, layers in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
        rules.append(
            tm.same(
                f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                (cfg.relative_attention_num_buckets, h),
                (stack, "relative_position", "relative_attention_bias", "embedding"),
            )
        )
        for i in range(layers):
            p, at = f"{stack}.block.{i}.layer", (stack, f"layer_{i}")
            rules += attention(f"{p}.0.SelfAttention", (*at, "self_attention"))
            rules.append(norm(f"{p}.0.layer_norm", (*at, "self_attention_ln")))
            ff = 1
            if stack == "decoder":
                rules += attention(f"{p}.1.EncDecAttention", (*at, "cross_attention"))
                rules.append(norm(f"{p}.1.layer_norm", (*at, "cross_attention_ln")))
                ff = 2
            rules += mlp(f"{p}.{ff}.DenseReluDense", (*at, "mlp"))
            rules.append(norm(f"{p}.{ff}.layer_norm", (*at, "mlp_ln")))
        rules.append(norm(f"{stack}.final_layer_norm", (stack, "final_ln")))
    ties = [
        tm.Tie("encoder.embed_tokens.weight", "shared.weight"),
        tm.Tie("decoder.embed_tokens.weight", "shared.weight"),
    ]
    if cfg.tie_word_embeddings:
        ties.append(tm.Tie("lm_head.weight", "shared.weight"))
    else:
        rules.append(tm.transposed("lm_head.weight", (V, d), ("lm_head", "kernel")))
    variant = "1.0, relu, tied" if cfg.tie_word_embeddings else f"{cfg.feed_forward}, untied"
    return tm.Mapping(
        rules=tuple(rules),
        ties=tuple(ties),
        # Created by HF's T5Attention for the first decoder block, never used.
        ignored=(r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight",),
        what=(
            f"T5Config({cfg.num_layers}+{cfg.num_decoder_layers} layers, d_model {d}, {h} heads "
            f"x {dk}, d_ff {F}, vocab {V}, {variant})"
        ),
    )


def params_and_report(
    state_dict: MappingType[str, Any], cfg: t5.T5Config
) -> tuple[dict[str, Any], tm.Report]:
    return tm.to_ptjax(mapping(cfg), state_dict)


def params_from_hf(state_dict: MappingType[str, Any], cfg: t5.T5Config) -> dict[str, Any]:
    """ptjax T5 params (float32 numpy) from an HF `T5ForConditionalGeneration` state dict.

    Every tensor is accounted for: a missing, unexpected or mis-shaped one raises a
    ConversionError (a ValueError) naming it. The per-stack `embed_tokens` copies, and
    `lm_head.weight` for a tied (1.0) config, must equal `shared.weight`.
    """
    return params_and_report(state_dict, cfg)[0]


def params_to_hf(params: dict[str, Any], cfg: t5.T5Config) -> tuple[dict[str, Any], str]:
    """(HF state dict, 'T5ForConditionalGeneration'); the tied copies of `shared` are not
    written, as `save_pretrained` does not write them."""
    return tm.to_hf(mapping(cfg), params), "T5ForConditionalGeneration"


def hf_config(cfg: t5.T5Config, arch: str, *, pad_id: int = 0, eos_id: int = 1) -> dict[str, Any]:
    """config.json; `tie_word_embeddings` false marks 1.1's unscaled, separate output layer
    (read so by transformers 4 and 5)."""
    return {
        "architectures": [arch],
        "model_type": MODEL_TYPE,
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "d_kv": cfg.d_kv,
        "d_ff": cfg.d_ff,
        "num_layers": cfg.num_layers,
        "num_decoder_layers": cfg.num_decoder_layers,
        "num_heads": cfg.num_heads,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "dropout_rate": cfg.dropout_rate,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_factor": 1.0,
        "feed_forward_proj": cfg.feed_forward,
        "is_encoder_decoder": True,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "n_positions": cfg.max_len,
        "pad_token_id": pad_id,
        "eos_token_id": eos_id,
        "decoder_start_token_id": t5.DECODER_START_ID,
        "torch_dtype": "float32",
    }
