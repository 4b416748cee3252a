"""Llama-style decoder <-> Hugging Face `LlamaForCausalLM` (and `MistralForCausalLM` and
`Qwen2ForCausalLM`, whose weights are laid out the same, Qwen2's with biases on the query, key
and value projections; a sliding window is refused, since ptjax attends to the whole context).

transformers' Llama applies rotary positions in the halves layout (`rotate_half`), as
ptjax.models.llama does, so the projections are copied as they are, transposed from
torch.nn.Linear's [out, in].

| Hugging Face name                                   | ptjax path                                 |
| --------------------------------------------------- | ------------------------------------------ |
| model.embed_tokens.weight [V, d]                    | wte/embedding                              |
| model.layers.i.input_layernorm.weight [d]           | h_i/ln_1/scale                             |
| model.layers.i.self_attn.q_proj.weight [H*hd, d]    | h_i/attn/query/kernel [d, H, hd]           |
| model.layers.i.self_attn.{k,v}_proj.weight          | h_i/attn/{key,value}/kernel [d, KV, hd]    |
| model.layers.i.self_attn.{q,k,v}_proj.bias (Qwen2)  | h_i/attn/{query,key,value}/bias [heads, hd]|
| model.layers.i.self_attn.o_proj.weight [d, H*hd]    | h_i/attn/out/kernel [H, hd, d]             |
| model.layers.i.post_attention_layernorm.weight      | h_i/ln_2/scale                             |
| model.layers.i.mlp.{gate,up}_proj.weight [F, d]     | h_i/mlp/{wi_0,wi_1}/kernel [d, F]          |
| model.layers.i.mlp.down_proj.weight [d, F]          | h_i/mlp/wo/kernel [F, d]                   |
| model.norm.weight [d]                               | ln_f/scale                                 |
| lm_head.weight [V, d]                               | lm_head/kernel [d, V]; tied: equals wte    |
| *.rotary_emb.inv_freq                               | dropped (recomputed from rope_theta)       |
"""

from __future__ import annotations

from collections.abc import Mapping as MappingType
from typing import Any

from ptjax.interop import tensor_map as tm
from ptjax.models import layers, llama

MODEL_TYPE = "llama"
MODEL_TYPES = ("llama", "mistral", "qwen2")
FAMILY = "llama"
ARCHITECTURES = {
    "LlamaForCausalLM": ("causal_lm", None),
    "LlamaModel": ("causal_lm", None),
    "MistralForCausalLM": ("causal_lm", None),
    "Qwen2ForCausalLM": ("causal_lm", None),
}


def _rope_scaling(hf: dict[str, Any]) -> str:
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return "none"
    if kind != "llama3":
        raise tm.ConversionError(
            f"config.json rope_scaling={scaling!r}: ptjax's Llama supports Llama 3's scaling "
            "('llama3') or none."
        )
    return llama.RopeScaling(
        float(scaling["factor"]),
        float(scaling["low_freq_factor"]),
        float(scaling["high_freq_factor"]),
        int(scaling["original_max_position_embeddings"]),
    ).spec()


def _rope_theta(hf: dict[str, Any]) -> float:
    parameters = hf.get("rope_parameters") or {}
    return float(hf.get("rope_theta", parameters.get("rope_theta", 10_000.0)))


def model_config(hf: dict[str, Any]) -> llama.LlamaConfig:
    """ptjax's LlamaConfig of an HF Llama / Mistral config.json; features ptjax lacks are
    errors naming the key."""
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    max_len = hf.get("max_position_embeddings", 2048)
    qwen2 = hf.get("model_type") == "qwen2"  # Biases on q/k/v; a window only when used.
    window = hf.get("sliding_window") if hf.get("use_sliding_window", not qwen2) else None
    head_dim = d // heads
    checks = {
        "hidden_act": (hf.get("hidden_act", "silu") == "silu", "'silu' (SwiGLU)"),
        "attention_bias": (qwen2 or not hf.get("attention_bias", False), "false"),
        "mlp_bias": (not hf.get("mlp_bias", False), "false"),
        "head_dim": (hf.get("head_dim") in (None, head_dim), f"d / heads ({head_dim})"),
        "sliding_window": (window is None or window >= max_len, "none (whole-context attention)"),
    }
    for key, (ok, want) in checks.items():
        if not ok:
            raise tm.ConversionError(
                f"config.json {key}={hf.get(key)!r}: ptjax's Llama supports only {want}."
            )
    dropout = float(hf.get("attention_dropout", 0.0))
    return llama.LlamaConfig(
        vocab_size=hf["vocab_size"],
        max_len=max_len,
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        d_model=d,
        d_ff=hf["intermediate_size"],
        rope_theta=_rope_theta(hf),
        rope_scaling=_rope_scaling(hf),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=qwen2,
        dropout_rate=0.0,
        attention_dropout_rate=dropout,
    )


def architecture(hf: dict[str, Any]) -> str:
    names = hf.get("architectures") or ["LlamaForCausalLM"]
    if names[0] not in ARCHITECTURES:
        raise tm.ConversionError(
            f"config.json architectures={names}: ptjax converts {sorted(ARCHITECTURES)}."
        )
    return names[0]


def mapping(cfg: llama.LlamaConfig) -> tm.Mapping:
    d, h, kv, hd, F, V = (
        cfg.d_model,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.d_ff,
        cfg.vocab_size,
    )
    rules = [tm.same("model.embed_tokens.weight", (V, d), ("wte", "embedding"))]
    for i in range(cfg.num_layers):
        p, at = f"model.layers.{i}", f"h_{i}"
        attn, mlp = f"{p}.self_attn", f"{p}.mlp"
        rules += [
            tm.same(f"{p}.input_layernorm.weight", (d,), (at, "ln_1", "scale")),
            tm.transposed(
                f"{attn}.q_proj.weight", (h * hd, d), (at, "attn", "query", "kernel"), (d, h, hd)
            ),  # fmt: skip
            tm.transposed(
                f"{attn}.k_proj.weight", (kv * hd, d), (at, "attn", "key", "kernel"), (d, kv, hd)
            ),  # fmt: skip
            tm.transposed(
                f"{attn}.v_proj.weight", (kv * hd, d), (at, "attn", "value", "kernel"), (d, kv, hd)
            ),  # fmt: skip
            tm.transposed(
                f"{attn}.o_proj.weight", (d, h * hd), (at, "attn", "out", "kernel"), (h, hd, d)
            ),  # fmt: skip
            *(
                tm.reshaped(f"{attn}.{x}_proj.bias", (n * hd,), (at, "attn", name, "bias"), (n, hd))
                for x, name, n in (("q", "query", h), ("k", "key", kv), ("v", "value", kv))
                if cfg.qkv_bias
            ),
            tm.same(f"{p}.post_attention_layernorm.weight", (d,), (at, "ln_2", "scale")),
            tm.transposed(f"{mlp}.gate_proj.weight", (F, d), (at, "mlp", "wi_0", "kernel")),
            tm.transposed(f"{mlp}.up_proj.weight", (F, d), (at, "mlp", "wi_1", "kernel")),
            tm.transposed(f"{mlp}.down_proj.weight", (d, F), (at, "mlp", "wo", "kernel")),
        ]
    rules.append(tm.same("model.norm.weight", (d,), ("ln_f", "scale")))
    ties: tuple[tm.Tie, ...] = ()
    if cfg.tie_embeddings:
        ties = (tm.Tie("lm_head.weight", "model.embed_tokens.weight"),)
    else:
        rules.append(tm.transposed("lm_head.weight", (V, d), ("lm_head", "kernel")))
    return tm.Mapping(
        rules=tuple(rules),
        ties=ties,
        ignored=(r"(model\.)?(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq",),
        what=(
            f"LlamaConfig({cfg.num_layers} layers, d_model {d}, {h} heads, {kv} key/value "
            f"heads, vocab {V}, tie_embeddings={cfg.tie_embeddings})"
        ),
    )


def _normalize(state_dict: MappingType[str, Any]) -> dict[str, Any]:
    """Names under `model.` (a LlamaModel's files have none)."""
    return {
        (k if k.startswith(("model.", "lm_head.")) else "model." + k): v
        for k, v in state_dict.items()
    }


def params_and_report(
    state_dict: MappingType[str, Any], cfg: llama.LlamaConfig
) -> tuple[dict[str, Any], tm.Report]:
    return tm.to_ptjax(mapping(cfg), _normalize(state_dict))


def params_from_hf(state_dict: MappingType[str, Any], cfg: llama.LlamaConfig) -> dict[str, Any]:
    """ptjax Llama params (float32 numpy) from an HF Llama state dict, per the module table."""
    return params_and_report(state_dict, cfg)[0]


def params_to_hf(params: dict[str, Any], cfg: llama.LlamaConfig) -> tuple[dict[str, Any], str]:
    """(HF state dict, 'LlamaForCausalLM', or 'Qwen2ForCausalLM' with q/k/v biases); a tied
    lm_head.weight is not written, as `save_pretrained` does not write it."""
    arch = "Qwen2ForCausalLM" if cfg.qkv_bias else "LlamaForCausalLM"
    return tm.to_hf(mapping(cfg), params), arch


def hf_config(cfg: llama.LlamaConfig, arch: str, *, bos_id: int, eos_id: int) -> dict[str, Any]:
    scaling = cfg.scaling
    return {
        "architectures": [arch],
        "model_type": "qwen2" if cfg.qkv_bias else MODEL_TYPE,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_len,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None
        if scaling is None
        else {
            "rope_type": "llama3",
            "factor": scaling.factor,
            "low_freq_factor": scaling.low_freq_factor,
            "high_freq_factor": scaling.high_freq_factor,
            "original_max_position_embeddings": scaling.original_max_len,
        },
        "attention_bias": cfg.qkv_bias,
        "mlp_bias": False,
        "attention_dropout": layers.attention_dropout_rate(cfg),
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": 0.02,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
    }
