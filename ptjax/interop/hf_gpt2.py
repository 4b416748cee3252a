"""GPT <-> Hugging Face `GPT2LMHeadModel` (and `GPT2Model`).

GPT-2's projections are `Conv1D`s, whose weights are laid out (in, out), the transpose of
`torch.nn.Linear`; its query, key and value projections are one fused `c_attn` [d, 3d]. Both
use tanh GELU ('gelu_new'), as ptjax's GPT.

| Hugging Face name (under `transformer.`, optional)  | ptjax path                                 |
| --------------------------------------------------- | ------------------------------------------ |
| wte.weight [V, d]                                   | wte/embedding (also the output layer)      |
| wpe.weight [P, d]                                   | wpe/embedding                              |
| h.i.ln_1.{weight,bias}, h.i.ln_2.*                  | h_i/ln_1/{scale,bias}, h_i/ln_2/*          |
| h.i.attn.c_attn.weight [d, 3d] (in, out)            | h_i/attn/{query,key,value}/kernel [d,h,hd] |
| h.i.attn.c_attn.bias [3d]                           | h_i/attn/{query,key,value}/bias [h, hd]    |
| h.i.attn.c_proj.{weight [d, d],bias}                | h_i/attn/out/{kernel [h, hd, d],bias}      |
| h.i.mlp.c_fc.{weight [d, F],bias}                   | h_i/mlp/wi/{kernel,bias} (same layout)     |
| h.i.mlp.c_proj.{weight [F, d],bias}                 | h_i/mlp/wo/{kernel,bias}                   |
| ln_f.{weight,bias}                                  | ln_f/{scale,bias}                          |
| lm_head.weight [V, d] (top level)                   | tied: must equal wte                       |
| h.i.attn.bias, h.i.attn.masked_bias                 | dropped (causal-mask buffers)              |
"""

from __future__ import annotations

from collections.abc import Mapping as MappingType
from typing import Any

import numpy as np

from ptjax.interop import tensor_map as tm
from ptjax.models import gpt, layers

MODEL_TYPE = "gpt2"
FAMILY = "gpt"
ARCHITECTURES = {"GPT2LMHeadModel": ("causal_lm", None), "GPT2Model": ("causal_lm", None)}
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def model_config(hf: dict[str, Any]) -> gpt.GPTConfig:
    """ptjax's GPTConfig of an HF GPT-2 config.json; features ptjax lacks are errors."""
    checks = {
        "activation_function": (
            hf.get("activation_function", "gelu_new") in _TANH_GELUS,
            "a tanh GELU ('gelu_new')",
        ),
        "scale_attn_weights": (hf.get("scale_attn_weights", True) is True, "true"),
        "scale_attn_by_inverse_layer_idx": (
            not hf.get("scale_attn_by_inverse_layer_idx", False),
            "false",
        ),
        "add_cross_attention": (not hf.get("add_cross_attention", False), "false"),
    }
    for key, (ok, want) in checks.items():
        if not ok:
            raise tm.ConversionError(
                f"config.json {key}={hf.get(key)!r}: ptjax's GPT supports only {want}."
            )
    d = hf["n_embd"]
    return gpt.GPTConfig(
        vocab_size=hf["vocab_size"],
        max_len=hf["n_positions"],
        num_layers=hf["n_layer"],
        num_heads=hf["n_head"],
        d_model=d,
        d_ff=hf.get("n_inner") or 4 * d,
        dropout_rate=float(hf.get("resid_pdrop", 0.1)),
        attention_dropout_rate=tm.attention_rate(hf, "attn_pdrop", "resid_pdrop"),
        layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
    )


def architecture(hf: dict[str, Any]) -> str:
    names = hf.get("architectures") or ["GPT2LMHeadModel"]
    if names[0] not in ARCHITECTURES:
        raise tm.ConversionError(
            f"config.json architectures={names}: ptjax converts {sorted(ARCHITECTURES)}."
        )
    return names[0]


def mapping(cfg: gpt.GPTConfig) -> tm.Mapping:
    d, h, hd, F = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.d_ff

    def norm(hf: str, at: tm.Path) -> list[tm.Rule]:
        return [
            tm.same(f"{hf}.weight", (d,), (*at, "scale")),
            tm.same(f"{hf}.bias", (d,), (*at, "bias")),
        ]

    def fused(hf: str, shape: tuple[int, ...], at: tm.Path, leaf: str, to: tuple) -> tm.Rule:
        """c_attn: [.., 3d] split into query, key, value (last axis, in that order)."""
        paths = tuple((*at, x, leaf) for x in ("query", "key", "value"))
        return tm.Rule(
            hf,
            shape,
            paths,
            lambda x: tuple(part.reshape(to) for part in np.split(x, 3, axis=-1)),
            lambda *parts: np.concatenate([p.reshape(*shape[:-1], d) for p in parts], -1),
        )

    t = "transformer"
    rules = [
        tm.same(f"{t}.wte.weight", (cfg.vocab_size, d), ("wte", "embedding")),
        tm.same(f"{t}.wpe.weight", (cfg.max_len, d), ("wpe", "embedding")),
    ]
    for i in range(cfg.num_layers):
        p, attn, mlp = f"{t}.h.{i}", (f"h_{i}", "attn"), (f"h_{i}", "mlp")
        rules += [
            *norm(f"{p}.ln_1", (f"h_{i}", "ln_1")),
            fused(f"{p}.attn.c_attn.weight", (d, 3 * d), attn, "kernel", (d, h, hd)),
            fused(f"{p}.attn.c_attn.bias", (3 * d,), attn, "bias", (h, hd)),
            tm.reshaped(f"{p}.attn.c_proj.weight", (d, d), (*attn, "out", "kernel"), (h, hd, d)),
            tm.same(f"{p}.attn.c_proj.bias", (d,), (*attn, "out", "bias")),
            *norm(f"{p}.ln_2", (f"h_{i}", "ln_2")),
            tm.same(f"{p}.mlp.c_fc.weight", (d, F), (*mlp, "wi", "kernel")),
            tm.same(f"{p}.mlp.c_fc.bias", (F,), (*mlp, "wi", "bias")),
            tm.same(f"{p}.mlp.c_proj.weight", (F, d), (*mlp, "wo", "kernel")),
            tm.same(f"{p}.mlp.c_proj.bias", (d,), (*mlp, "wo", "bias")),
        ]
    rules += norm(f"{t}.ln_f", ("ln_f",))
    return tm.Mapping(
        rules=tuple(rules),
        ties=(tm.Tie("lm_head.weight", f"{t}.wte.weight"),),
        ignored=(rf"{t}\.h\.\d+\.attn\.(bias|masked_bias)",),
        what=f"GPTConfig({cfg.num_layers} layers, d_model {d}, {h} heads, vocab {cfg.vocab_size})",
    )


def _normalize(state_dict: MappingType[str, Any]) -> dict[str, Any]:
    """Names under `transformer.` (the published gpt2 files have none)."""
    return {
        (k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k): v
        for k, v in state_dict.items()
    }


def params_and_report(
    state_dict: MappingType[str, Any], cfg: gpt.GPTConfig
) -> tuple[dict[str, Any], tm.Report]:
    return tm.to_ptjax(mapping(cfg), _normalize(state_dict))


def params_from_hf(state_dict: MappingType[str, Any], cfg: gpt.GPTConfig) -> dict[str, Any]:
    """ptjax GPT params (float32 numpy) from an HF GPT-2 state dict, per the module table."""
    return params_and_report(state_dict, cfg)[0]


def params_to_hf(params: dict[str, Any], cfg: gpt.GPTConfig) -> tuple[dict[str, Any], str]:
    """(HF state dict, 'GPT2LMHeadModel'); lm_head.weight is tied to wte and not written, as
    `save_pretrained` does."""
    return tm.to_hf(mapping(cfg), params), "GPT2LMHeadModel"


def hf_config(cfg: gpt.GPTConfig, arch: str, *, eos_id: int) -> dict[str, Any]:
    return {
        "architectures": [arch],
        "model_type": MODEL_TYPE,
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_len,
        "n_embd": cfg.d_model,
        "n_layer": cfg.num_layers,
        "n_head": cfg.num_heads,
        "n_inner": cfg.d_ff,
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.dropout_rate,
        "embd_pdrop": cfg.dropout_rate,
        "attn_pdrop": layers.attention_dropout_rate(cfg),
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
    }
