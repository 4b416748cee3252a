"""The model registry: family name -> module class, hyper-parameter dataclass and sizes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import ml_collections

from ptjax.errors import ConfigError
from ptjax.models import bert, gpt, llama, t5, t5_decoding

# Run-config keys (model.<key>, 0: the named size's) that override a size's shape.
SHAPE_KEYS = (
    "num_layers",
    "d_model",
    "num_heads",
    "d_ff",
    "d_kv",
    "num_decoder_layers",
    "num_kv_heads",
)
# Llama-style settings (model.<key>; '' and 0 keep the size's) and how a config field reads them.
LLAMA_KEYS = {
    "rope_theta": float,
    "rope_scaling": str,
    "norm_eps": float,
    "tie_embeddings": lambda value: value == "true",
    "qkv_bias": lambda value: value == "true",
}


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """What the trainer needs to know about a family of models."""

    module: type[nn.Module]
    config_class: type
    sizes: dict[str, dict[str, Any]]
    # Training FLOPs per token of (model config, seq_len, the share of positions the vocabulary
    # output runs on: a task's predicted_fraction; decoders' tasks predict every position).
    flops_per_token: Callable[[Any, int, float], float]
    # Task name -> the module with that task's head, where it differs from `module`.
    heads: dict[str, type[nn.Module]] = dataclasses.field(default_factory=dict)
    # Control pieces a tokenizer trained for this family must hold (BERT's [CLS] [SEP] [MASK]).
    control_symbols: tuple[str, ...] = ()
    # Ids the model has beyond the tokenizer's pieces (T5's sentinels), from the run config.
    extra_vocab: Callable[[ml_collections.ConfigDict], int] = lambda config: 0
    # Whether d_model must split evenly into heads (not for T5, whose d_kv is explicit).
    heads_divide_width: bool = True
    # (model, max_new_tokens) -> (prefill, step) for ptjax.decoding; None if it cannot decode.
    decode_fns: Callable[[Any, int], tuple[Callable, Callable]] | None = None
    # params -> what prefill/step take (e.g. with the output table transposed once per call).
    decode_params: Callable[[Any], Any] = lambda params: params
    # Whether prompts are encoder inputs (T5) rather than a text to continue (GPT).
    encoder_decoder: bool = False

    def make_config(self, config: ml_collections.ConfigDict, vocab_size: int | None = None) -> Any:
        """The model's hyper-parameters: the named size, then the run config's overrides."""
        params = dict(self.sizes[config.model.size])
        if config.model.vocab_size:
            params["vocab_size"] = config.model.vocab_size
        elif vocab_size is not None:
            params["vocab_size"] = vocab_size + self.extra_vocab(config)
        if config.model.max_len:
            params["max_len"] = config.model.max_len
        if config.model.dropout_rate >= 0:
            params["dropout_rate"] = config.model.dropout_rate
        if config.model.get("attention_dropout_rate", -1.0) >= 0:
            params["attention_dropout_rate"] = config.model.attention_dropout_rate
        params["dtype"] = config.model.dtype
        params["param_dtype"] = config.model.param_dtype
        params["remat"] = config.model.remat
        params["scan_layers"] = config.model.scan_layers
        fields = {f.name for f in dataclasses.fields(self.config_class)}
        for key in SHAPE_KEYS:
            value = config.model.get(key, 0)
            if value and key in fields:
                params[key] = value
        if "num_decoder_layers" in fields and config.model.get("num_layers", 0):
            # T5's decoder follows a new encoder depth unless given its own.
            params["num_decoder_layers"] = (
                config.model.get("num_decoder_layers", 0) or config.model.num_layers
            )
        if config.model.type_vocab_size and "type_vocab_size" in fields:
            params["type_vocab_size"] = config.model.type_vocab_size
        if "pre_ln" in fields:
            params["pre_ln"] = config.model.pre_ln
        for key, read in LLAMA_KEYS.items():
            value = config.model.get(key, "")
            if value and key in fields:
                params[key] = read(value)
        return self.config_class(**params)

    def module_for(self, task: str) -> type[nn.Module]:
        """The module that carries `task`'s head (the family's default module otherwise)."""
        return self.heads.get(task, self.module)

    def validate(self, config: ml_collections.ConfigDict) -> None:
        cfg = self.make_config(config)
        if self.heads_divide_width and cfg.d_model % cfg.num_heads:
            raise ConfigError(
                f"model {config.model.family}/{config.model.size}: d_model={cfg.d_model} is not "
                f"divisible by num_heads={cfg.num_heads} (model.d_model / model.num_heads)."
            )
        if config.seq_len > cfg.max_len:
            raise ConfigError(
                f"Config key seq_len={config.seq_len} exceeds the position table of model "
                f"{config.model.family}/{config.model.size} (max_len={cfg.max_len}); lower seq_len "
                "or raise model.max_len."
            )
        fields = {f.name for f in dataclasses.fields(self.config_class)}
        for key in SHAPE_KEYS:
            if config.model.get(key, 0) and key not in fields:
                raise ConfigError(
                    f"Config key model.{key}={config.model[key]} does not apply to "
                    f"model.family={config.model.family!r} (its shape keys: "
                    f"{', '.join(k for k in SHAPE_KEYS if k in fields)}); leave it at 0."
                )
        for key in ("type_vocab_size", "pre_ln"):
            if key not in fields and config.model[key]:
                raise ConfigError(
                    f"Config key model.{key}={config.model[key]!r} applies to BERT-style "
                    f"encoders, not model.family={config.model.family!r}; leave it at its default."
                )
        for key in LLAMA_KEYS:
            if key not in fields and config.model.get(key, ""):
                raise ConfigError(
                    f"Config key model.{key}={config.model[key]!r} applies to Llama-style "
                    f"decoders, not model.family={config.model.family!r}; leave it at its default."
                )
        if "num_kv_heads" in fields and cfg.num_heads % cfg.num_kv_heads:
            raise ConfigError(
                f"model {config.model.family}/{config.model.size}: num_heads={cfg.num_heads} is "
                f"not a multiple of num_kv_heads={cfg.num_kv_heads} (model.num_kv_heads)."
            )
        if "rope_scaling" in fields:
            try:
                llama.RopeScaling.parse(cfg.rope_scaling)
            except ValueError as e:
                raise ConfigError(f"Config key model.{e}") from None
        if not 0.0 <= cfg.dropout_rate < 1.0:
            raise ConfigError(
                f"Config key model.dropout_rate={cfg.dropout_rate} must be in [0, 1)."
            )


def _t5_flops(cfg: t5.T5Config, seq_len: int, predicted_fraction: float = 1.0) -> float:
    del predicted_fraction  # Every target position.
    return t5.flops_per_token(cfg, seq_len, seq_len)


def _gpt_flops(cfg: gpt.GPTConfig, seq_len: int, predicted_fraction: float = 1.0) -> float:
    del predicted_fraction  # Every position.
    return gpt.flops_per_token(cfg, seq_len)


def _llama_flops(cfg: llama.LlamaConfig, seq_len: int, predicted_fraction: float = 1.0) -> float:
    del predicted_fraction  # Every position.
    return llama.flops_per_token(cfg, seq_len)


MODELS: dict[str, ModelFamily] = {
    "gpt": ModelFamily(
        module=gpt.GPT,
        config_class=gpt.GPTConfig,
        sizes=gpt.SIZES,
        flops_per_token=_gpt_flops,
        decode_fns=gpt.decode_fns,
        decode_params=gpt.prepare_decode_params,
    ),
    "llama": ModelFamily(
        module=llama.Llama,
        config_class=llama.LlamaConfig,
        sizes=llama.SIZES,
        flops_per_token=_llama_flops,
        decode_fns=llama.decode_fns,
        decode_params=llama.prepare_decode_params,
    ),
    "bert": ModelFamily(
        module=bert.BertForPretraining,
        config_class=bert.BertConfig,
        sizes=bert.SIZES,
        flops_per_token=bert.flops_per_token,
        heads={
            "masked_lm": bert.BertForPretraining,
            "classification": bert.BertForClassification,
            "extractive_qa": bert.BertForQuestionAnswering,
        },
        control_symbols=bert.CONTROL_SYMBOLS,
    ),
    "t5": ModelFamily(
        module=t5.T5,
        config_class=t5.T5Config,
        sizes=t5.SIZES,
        flops_per_token=_t5_flops,  # Inputs and targets of seq_len tokens.
        decode_fns=t5_decoding.decode_fns,
        decode_params=t5_decoding.prepare_decode_params,
        encoder_decoder=True,
        extra_vocab=lambda config: config.seq2seq.extra_ids,
        heads_divide_width=False,
    ),
}


def build(
    config: ml_collections.ConfigDict, vocab_size: int | None = None, **head_kwargs: Any
) -> tuple[nn.Module, Any]:
    """Returns (linen module, its hyper-parameters) for a run config.

    The module carries config.task's head; `head_kwargs` size it (e.g. num_labels).
    """
    family = MODELS[config.model.family]
    model_config = family.make_config(config, vocab_size)
    return family.module_for(config.task)(model_config, **head_kwargs), model_config
