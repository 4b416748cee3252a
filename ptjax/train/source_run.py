"""The run an `init_checkpoint` comes from: its directory, its tokenizer and its model's shape.

A fine-tuning run that starts from another ptjax run (a pretraining run, or a Hugging Face
checkpoint imported by `scripts/convert_checkpoint.py`) takes that run's model shape, as
`from_pretrained` does: each shape key the run config leaves at 0 (model.num_layers, d_model,
num_heads, d_ff, vocab_size, max_len, type_vocab_size, d_kv, num_decoder_layers) is set to the
source run's value, read from its config.json; so are a Llama-style decoder's rotary, norm,
tied-output and bias settings (models.LLAMA_KEYS). A key the run config sets to another value than
the source's is refused, naming it; so is another family, or a size whose other architecture
choices (T5 1.0 vs 1.1, BERT's pre-LayerNorm blocks) differ from the source's.
"""

from __future__ import annotations

import copy
import dataclasses
import os

import ml_collections

from ptjax import models
from ptjax.config import ConfigError, load_run_config
from ptjax.data.tokenizer import load_tokenizer, tokenizer_file

CONFIG_FILE = "config.json"
# Run-config keys (model.<key>) of a model's shape, in the order they are taken.
SHAPE_KEYS = (
    *models.SHAPE_KEYS,
    "vocab_size",
    "max_len",
    "type_vocab_size",
    *models.LLAMA_KEYS,
)
# Hyper-parameters a run chooses for itself; the rest of a model config is its architecture.
_RUN_CHOICES = (
    "dropout_rate",
    "attention_dropout_rate",
    "dtype",
    "param_dtype",
    "remat",
    "scan_layers",
)


def _run_and_parents(path: str) -> list[str]:
    """`path` (absolute) and the two directories above it: a run directory, its checkpoints/ or
    best/, or a step directory in them."""
    paths = [os.path.abspath(path)]
    for _ in range(2):
        paths.append(os.path.dirname(paths[-1]))
    return paths


def find_run_dir(path: str) -> str | None:
    """The ptjax run directory holding `path` (the directory itself, its checkpoints/ or best/,
    or a step directory in them), or None when no such directory has a config.json."""
    found = [p for p in _run_and_parents(path) if os.path.isfile(os.path.join(p, CONFIG_FILE))]
    return found[0] if found else None


def source_tokenizer(init_checkpoint: str) -> str | None:
    """The tokenizer of the run an `init_checkpoint` comes from, if that run has one."""
    candidates = [
        tokenizer_file(os.path.join(p, "tokenizer")) for p in _run_and_parents(init_checkpoint)
    ]
    found = [c for c in candidates if os.path.exists(c)]
    return found[0] if found else None


def _model_config(config: ml_collections.ConfigDict, tokenizer: str | None) -> object:
    family = models.MODELS[config.model.family]
    vocab = None
    if not config.model.vocab_size and tokenizer is not None:
        vocab = load_tokenizer(tokenizer).vocab_size
    return family.make_config(config, vocab)


def adopt_source_shape(
    config: ml_collections.ConfigDict, workdir: str
) -> tuple[ml_collections.ConfigDict, list[str]]:
    """(the run config with the init_checkpoint run's shape, what was taken from it).

    Returns `config` itself when there is nothing to take: no init_checkpoint, or one that is
    not inside a ptjax run directory (then its parameters' shapes are checked as before). When
    the source is gone but this workdir already started from it, its own config.json holds what
    was taken then.
    """
    if not config.init_checkpoint or config.model.family not in models.MODELS:
        return config, []
    source_dir = find_run_dir(config.init_checkpoint)
    if source_dir is None:
        if os.path.isfile(os.path.join(workdir, CONFIG_FILE)):
            source_dir = workdir  # A resume whose source has moved: what it took then.
        else:
            return config, []
    source = load_run_config(source_dir)
    where = os.path.join(source_dir, CONFIG_FILE)
    if source.model.family != config.model.family:
        raise ConfigError(
            f"init_checkpoint={config.init_checkpoint!r} is a {source.model.family!r} run "
            f"({where}); this config has model.family={config.model.family!r}."
        )
    family = models.MODELS[config.model.family]
    if source.model.size not in family.sizes:
        raise ConfigError(f"{where}: model.size={source.model.size!r} is not a known size.")
    want = _model_config(source, source_tokenizer(config.init_checkpoint))
    fields = {f.name for f in dataclasses.fields(want)}
    keys = [k for k in SHAPE_KEYS if k in fields]
    out = copy.deepcopy(config)
    taken = []
    for key in keys:
        value = getattr(want, key)
        if isinstance(value, bool):  # A run config says 'true' / 'false' ('': the size's).
            value = "true" if value else "false"
        if out.model[key]:
            if out.model[key] != value:
                raise ConfigError(
                    f"Config key model.{key}={out.model[key]} contradicts init_checkpoint "
                    f"{config.init_checkpoint!r}, whose run has {key}={value} ({where}); leave "
                    f"model.{key} at 0 to take the checkpoint's."
                )
            continue
        made = getattr(family.make_config(out), key) if out.model.size in family.sizes else None
        if isinstance(made, bool):
            made = "true" if made else "false"
        if made == value:
            continue  # The named size already has it (vocab_size: the source's tokenizer).
        out.model[key] = value
        taken.append(f"model.{key}={value}")
    if config.model.size not in family.sizes:
        return out, taken  # validate() names the size.
    got = family.make_config(out, want.vocab_size - family.extra_vocab(out))
    differing = [
        f"{f}={getattr(got, f)!r} (source: {getattr(want, f)!r})"
        for f in sorted(fields - set(keys) - set(_RUN_CHOICES))
        if getattr(got, f) != getattr(want, f)
    ]
    if differing:
        raise ConfigError(
            f"The model differs from init_checkpoint's run ({where}: model.size="
            f"{source.model.size!r}, model.pre_ln={source.model.pre_ln}) in "
            f"{', '.join(differing)}; set model.size and model.pre_ln as that run has them."
        )
    return out, taken
