"""BERT <-> Hugging Face `BertModel` / `BertForMaskedLM` / `BertForPreTraining` /
`BertForSequenceClassification` / `BertForQuestionAnswering` (and BERT-architecture
sentence-embedding models, which are `BertModel`s).

| Hugging Face name (under `bert.`; none in BertModel) | ptjax path (under `bert/`)              |
| ---------------------------------------------------- | --------------------------------------- |
| embeddings.word_embeddings.weight [V, d]             | embeddings/word_embeddings/embedding    |
| embeddings.position_embeddings.weight [P, d]         | embeddings/position_embeddings/...      |
| embeddings.token_type_embeddings.weight [T, d]       | embeddings/token_type_embeddings/...    |
| embeddings.LayerNorm.{weight,bias}                   | embeddings/layer_norm/{scale,bias}      |
| encoder.layer.i.attention.self.{query,key,value}     | layer_i/attention/{query,key,value}/    |
|   .weight [d, d], .bias [d]                          |   kernel [d, h, hd] (.T), bias [h, hd]  |
| encoder.layer.i.attention.output.dense.{weight,bias} | layer_i/attention/out/kernel [h, hd, d] |
| encoder.layer.i.attention.output.LayerNorm.*         | layer_i/attention_ln/{scale,bias}       |
| encoder.layer.i.intermediate.dense.{weight,bias}     | layer_i/mlp/wi/{kernel (.T),bias}       |
| encoder.layer.i.output.dense.{weight,bias}           | layer_i/mlp/wo/{kernel (.T),bias}       |
| encoder.layer.i.output.LayerNorm.*                   | layer_i/output_ln/{scale,bias}          |
| pooler.dense.{weight,bias}                           | pooler/{kernel (.T),bias}               |
| cls.predictions.transform.dense.{weight,bias}        | mlm/transform/{kernel,bias} (top level) |
| cls.predictions.transform.LayerNorm.*                | mlm/transform_ln/{scale,bias}           |
| cls.predictions.bias [V]                             | mlm/output_bias                         |
| cls.predictions.decoder.weight, .bias                | tied: word embeddings, output_bias      |
| classifier.{weight,bias}                             | classification/classifier/{kernel,bias} |
| qa_outputs.{weight,bias}                             | span/qa_outputs/{kernel,bias}           |
| cls.seq_relationship.* (next-sentence prediction)    | dropped (ptjax has no NSP head)         |

Old checkpoints' `LayerNorm.gamma` / `.beta` are read as `.weight` / `.bias`; the
`embeddings.position_ids` / `token_type_ids` buffers are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping as MappingType
from typing import Any

import numpy as np

from ptjax.interop import tensor_map as tm
from ptjax.models import bert, layers

MODEL_TYPE = "bert"
FAMILY = "bert"
# HF architecture -> (ptjax task, head group the checkpoint must hold).
CLASSIFIER = "classification"  # The head (parameter group) of a sequence classifier.
ARCHITECTURES = {
    "BertModel": ("masked_lm", None),
    "BertForMaskedLM": ("masked_lm", "mlm"),
    "BertForPreTraining": ("masked_lm", "mlm"),
    "BertForSequenceClassification": ("classification", CLASSIFIER),
    "BertForQuestionAnswering": ("extractive_qa", "span"),
}
_HEAD_GROUPS = ("mlm", "classification", "span")
_POOLER_INIT_STD = 0.02  # BERT's initializer_range, as ptjax's `_dense`.


def model_config(hf: dict[str, Any]) -> bert.BertConfig:
    """ptjax's BertConfig of an HF BERT config.json; features ptjax lacks are errors."""
    unsupported = {
        "hidden_act": ("gelu", hf.get("hidden_act", "gelu")),
        "position_embedding_type": ("absolute", hf.get("position_embedding_type", "absolute")),
        "is_decoder": (False, bool(hf.get("is_decoder", False))),
        "add_cross_attention": (False, bool(hf.get("add_cross_attention", False))),
    }
    for key, (want, got) in unsupported.items():
        if got != want:
            raise tm.ConversionError(
                f"config.json {key}={got!r}: ptjax's BERT supports only {want!r}."
            )
    return bert.BertConfig(
        vocab_size=hf["vocab_size"],
        max_len=hf["max_position_embeddings"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        d_model=hf["hidden_size"],
        d_ff=hf["intermediate_size"],
        dropout_rate=float(hf.get("hidden_dropout_prob", 0.1)),
        attention_dropout_rate=tm.attention_rate(
            hf, "attention_probs_dropout_prob", "hidden_dropout_prob"
        ),
        type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
    )


def num_labels(hf: dict[str, Any]) -> int:
    if "id2label" in hf:
        return len(hf["id2label"])
    return int(hf.get("num_labels", 2))


def architecture(hf: dict[str, Any]) -> str:
    names = hf.get("architectures") or ["BertModel"]
    if names[0] not in ARCHITECTURES:
        raise tm.ConversionError(
            f"config.json architectures={names}: ptjax converts {sorted(ARCHITECTURES)}."
        )
    return names[0]


def mapping(cfg: bert.BertConfig, labels: int = 0, required: tuple[str, ...] = ()) -> tm.Mapping:
    """The BERT mapping; `required` head groups must be present, the others may be absent."""
    d, h, hd, V, F = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.vocab_size, cfg.d_ff

    def path(*names: str) -> tm.Path:
        return ("bert", *names)

    def norm(hf: str, at: tm.Path, group: str = "") -> list[tm.Rule]:
        return [
            tm.same(f"{hf}.weight", (d,), (*at, "scale"), group),
            tm.same(f"{hf}.bias", (d,), (*at, "bias"), group),
        ]

    def dense(hf: str, shape: tuple[int, int], at: tm.Path, group: str = "") -> list[tm.Rule]:
        return [
            tm.transposed(f"{hf}.weight", shape, (*at, "kernel"), group=group),
            tm.same(f"{hf}.bias", (shape[0],), (*at, "bias"), group),
        ]

    e, emb = "bert.embeddings", ("bert", "embeddings")
    rules = [
        tm.same(f"{e}.word_embeddings.weight", (V, d), (*emb, "word_embeddings", "embedding")),
        tm.same(
            f"{e}.position_embeddings.weight",
            (cfg.max_len, d),
            (*emb, "position_embeddings", "embedding"),
        ),
        tm.same(
            f"{e}.token_type_embeddings.weight",
            (cfg.type_vocab_size, d),
            (*emb, "token_type_embeddings", "embedding"),
        ),
        *norm(f"{e}.LayerNorm", (*emb, "layer_norm")),
    ]
    for i in range(cfg.num_layers):
        p, at = f"bert.encoder.layer.{i}", ("bert", f"layer_{i}", "attention")
        for x in ("query", "key", "value"):
            w, b = f"{p}.attention.self.{x}.weight", f"{p}.attention.self.{x}.bias"
            rules.append(tm.transposed(w, (d, d), (*at, x, "kernel"), (d, h, hd)))
            rules.append(tm.reshaped(b, (d,), (*at, x, "bias"), (h, hd)))
        out = f"{p}.attention.output.dense"
        rules.append(tm.transposed(f"{out}.weight", (d, d), (*at, "out", "kernel"), (h, hd, d)))
        rules.append(tm.same(f"{out}.bias", (d,), (*at, "out", "bias")))
        at = ("bert", f"layer_{i}")
        rules += [
            *norm(f"{p}.attention.output.LayerNorm", (*at, "attention_ln")),
            *dense(f"{p}.intermediate.dense", (F, d), (*at, "mlp", "wi")),
            *dense(f"{p}.output.dense", (d, F), (*at, "mlp", "wo")),
            *norm(f"{p}.output.LayerNorm", (*at, "output_ln")),
        ]
    rules += dense("bert.pooler.dense", (d, d), ("bert", "pooler"), "pooler")
    rules += [
        *dense("cls.predictions.transform.dense", (d, d), ("mlm", "transform"), "mlm"),
        *norm("cls.predictions.transform.LayerNorm", ("mlm", "transform_ln"), "mlm"),
        tm.same("cls.predictions.bias", (V,), ("mlm", "output_bias"), "mlm"),
    ]
    if labels:
        at = ("classification", "classifier")
        rules += dense("classifier", (labels, d), at, "classification")
    rules += dense("qa_outputs", (2, d), ("span", "qa_outputs"), "span")
    return tm.Mapping(
        rules=tuple(rules),
        ties=(
            tm.Tie("cls.predictions.decoder.weight", f"{e}.word_embeddings.weight"),
            tm.Tie("cls.predictions.decoder.bias", "cls.predictions.bias"),
        ),
        ignored=(
            r"bert\.embeddings\.(position_ids|token_type_ids)",
            r"cls\.seq_relationship\.(weight|bias)",
        ),
        optional_groups=frozenset({"pooler", *_HEAD_GROUPS}) - set(required),
        what=f"BertConfig({cfg.num_layers} layers, d_model {d}, {h} heads, vocab {V})",
    )


def _normalize(state_dict: MappingType[str, Any]) -> dict[str, Any]:
    """HF names as `BertFor*` saves them: `bert.` before encoder names, `.weight`/`.bias` for
    the `.gamma`/`.beta` of old (TF-converted) checkpoints."""
    out = {}
    for name, value in state_dict.items():
        if name.startswith(("embeddings.", "encoder.", "pooler.")):
            name = "bert." + name
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
        name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
        out[name] = value
    return out


def params_from_hf(
    state_dict: MappingType[str, Any],
    cfg: bert.BertConfig,
    *,
    labels: int | None = None,
    required: tuple[str, ...] = (),
) -> dict[str, Any]:
    """ptjax params (float32 numpy) from an HF BERT state dict, per the module table.

    Returns {'bert': ...} plus 'mlm', 'classification' and 'span' when their weights are
    present (`required` heads must be); the pooler is absent when the checkpoint has none
    (`BertForMaskedLM`, `BertForQuestionAnswering`). `labels` defaults to the classifier's rows.
    """
    return params_and_report(state_dict, cfg, labels=labels, required=required)[0]


def params_and_report(
    state_dict: MappingType[str, Any],
    cfg: bert.BertConfig,
    *,
    labels: int | None = None,
    required: tuple[str, ...] = (),
) -> tuple[dict[str, Any], tm.Report]:
    sd = _normalize(state_dict)
    if labels is None:
        labels = int(np.shape(sd["classifier.weight"])[0]) if "classifier.weight" in sd else 0
    return tm.to_ptjax(mapping(cfg, labels, required), sd)


def fresh_pooler(cfg: bert.BertConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """A pooler initialised as ptjax initialises one (N(0, 0.02) kernel, zero bias), for
    checkpoints without one; it does not affect MLM or span logits."""
    rng = np.random.default_rng(seed)
    kernel = rng.normal(0.0, _POOLER_INIT_STD, (cfg.d_model, cfg.d_model)).astype(np.float32)
    return {"kernel": kernel, "bias": np.zeros((cfg.d_model,), np.float32)}


def heads(params: dict[str, Any]) -> list[str]:
    return [g for g in _HEAD_GROUPS if g in params]


def export_architecture(params: dict[str, Any]) -> str:
    """The HF class that holds exactly the heads of `params` (none: `BertModel`)."""
    present = heads(params)
    if len(present) > 1:
        raise tm.ConversionError(f"Parameters hold several heads {present}; export one.")
    by_head = {"mlm": "BertForMaskedLM", CLASSIFIER: "BertForSequenceClassification"}
    return by_head.get(present[0], "BertForQuestionAnswering") if present else "BertModel"


def params_to_hf(params: dict[str, Any], cfg: bert.BertConfig) -> tuple[dict[str, Any], str]:
    """(HF state dict, HF architecture) of ptjax BERT params; see `export_architecture`.

    `BertForMaskedLM` and `BertForQuestionAnswering` have no pooler, so it is left out (an MLM
    or QA run never trains it); `BertModel` names carry no `bert.` prefix. The tied decoder
    weights are not written, as Hugging Face's `save_pretrained` does not write them.
    """
    arch = export_architecture(params)
    if cfg.pre_ln:
        raise tm.ConversionError(
            "model.pre_ln=True (pre-LayerNorm blocks) has no Hugging Face BERT equivalent."
        )
    params = dict(params)
    if arch in ("BertForMaskedLM", "BertForQuestionAnswering"):
        params["bert"] = {k: v for k, v in params["bert"].items() if k != "pooler"}
    labels = 0
    if CLASSIFIER in params:
        labels = int(np.shape(params[CLASSIFIER]["classifier"]["bias"])[0])
    head = ARCHITECTURES[arch][1]
    sd = tm.to_hf(mapping(cfg, labels, required=(head,) if head else ()), params)
    if arch == "BertModel":
        sd = {k.removeprefix("bert."): v for k, v in sd.items()}
    return sd, arch


def hf_config(
    cfg: bert.BertConfig, arch: str, *, labels: int = 0, pad_id: int = 0
) -> dict[str, Any]:
    """config.json for `arch` (what `BertConfig.from_pretrained` needs)."""
    out = {
        "architectures": [arch],
        "model_type": MODEL_TYPE,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.d_ff,
        "hidden_act": "gelu",
        "hidden_dropout_prob": cfg.dropout_rate,
        "attention_probs_dropout_prob": layers.attention_dropout_rate(cfg),
        "max_position_embeddings": cfg.max_len,
        "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": _POOLER_INIT_STD,
        "layer_norm_eps": cfg.layer_norm_eps,
        "position_embedding_type": "absolute",
        "pad_token_id": pad_id,
        "torch_dtype": "float32",
    }
    if labels:
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(labels)}
    return out
