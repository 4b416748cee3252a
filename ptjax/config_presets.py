"""Helpers shared by the files in configs/: argument parsing and per-family presets."""

from __future__ import annotations

import ml_collections

from ptjax.config import ConfigError, base_config


def parse_arg(arg: str | None, **defaults: object) -> ml_collections.ConfigDict:
    """Parses 'key=value,key=value' (the part after ':' in --config=file.py:ARG).

    Values take the type of their default; an unknown key is an error naming it.
    """
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise ConfigError(
                f"Config argument {item!r} is not key=value with key in {sorted(defaults)}."
            )
        kind = type(defaults[key])
        if kind is bool:
            out[key] = value.lower() in ("1", "true", "yes")
        else:
            out[key] = kind(value)
    return out


# Per-size training defaults for GPT pretraining (GPT-2 paper / nanoGPT settings for the big
# ones, CPU-sized for 'tiny').
_GPT_TRAINING = {
    "tiny": dict(
        seq_len=128, per_device_batch_size=8, learning_rate=1e-3, warmup_steps=100, total_steps=1200
    ),
    "bench": dict(
        seq_len=256, per_device_batch_size=8, learning_rate=6e-4, warmup_steps=100, total_steps=2000
    ),
    "small": dict(
        seq_len=1024,
        per_device_batch_size=16,
        learning_rate=6e-4,
        warmup_steps=2000,
        total_steps=600_000,
    ),
    "medium": dict(
        seq_len=1024,
        per_device_batch_size=8,
        learning_rate=3e-4,
        warmup_steps=2000,
        total_steps=600_000,
    ),
    "large": dict(
        seq_len=1024,
        per_device_batch_size=4,
        learning_rate=2.5e-4,
        warmup_steps=2000,
        total_steps=600_000,
    ),
    "xl": dict(
        seq_len=1024,
        per_device_batch_size=2,
        learning_rate=2e-4,
        warmup_steps=2000,
        total_steps=600_000,
    ),
}


def gpt_config(size: str) -> ml_collections.ConfigDict:
    """Causal-LM pretraining of a GPT of the named size on the bundled corpus."""
    if size not in _GPT_TRAINING:
        raise ConfigError(f"GPT size {size!r} is not one of {sorted(_GPT_TRAINING)}.")
    t = _GPT_TRAINING[size]
    c = base_config()
    c.task = "causal_lm"
    c.model.family = "gpt"
    c.model.size = size
    c.seq_len = t["seq_len"]
    c.per_device_batch_size = t["per_device_batch_size"]
    c.total_steps = t["total_steps"]
    c.optimizer.learning_rate = t["learning_rate"]
    c.optimizer.warmup_steps = t["warmup_steps"]
    c.sample_prompts = ("In the beginning", "Jesus said to them,", "")
    if size == "tiny":
        c.sample_every_steps = 200
        c.log_every_steps = 50
        c.eval_every_steps = 200
        c.checkpoint_every_steps = 200
    else:
        c.tokenizer.vocab_size = 32000
        c.log_every_steps = 100
        c.eval_every_steps = 2000
        c.checkpoint_every_steps = 2000
        c.sample_every_steps = 2000
    return c
