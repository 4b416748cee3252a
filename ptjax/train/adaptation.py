"""A LoRA fine-tune (config finetune.lora): what trains, the frozen base and the reference to it,
and a LoRA run's parameters as a plain model's.

The trainer initialises the model from init_checkpoint as any fine-tune does, adds low-rank
adapters to it (ptjax.models.lora) and splits the tree (`start`): the adapters and the task's
new parameters (those the base does not hold: a classifier) train; the rest is the frozen base.
The train state holds the base beside the trainable parameters (ptjax.train.state.AdaptedState)
but outside the optimizer: no gradients, no moments. Checkpoints and best/ hold the trainable
parameters (with their optimizer state); the run's run.json records the base checkpoint
(`facts`: the step directory init_checkpoint resolved to when the run started), from which a
resume, an evaluation, decoding or an export reads the base again (`plain_params`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from ptjax.errors import ConfigError
from ptjax.models import lora
from ptjax.train.checkpoint import restore_matching_params, saved_params, shape_mismatches
from ptjax.train.state import join_params

FACTS_KEY = "lora"  # run.json: {"base": step directory, "rank", "alpha", "targets"}.


def spec(config: ml_collections.ConfigDict) -> lora.LoraSpec | None:
    """The run's adapters (None: finetune.lora.rank = 0, a full fine-tune)."""
    c = config.finetune.lora
    if not c.rank:
        return None
    try:
        return lora.LoraSpec(
            rank=c.rank,
            alpha=float(c.alpha),
            targets=tuple(t.strip() for t in c.targets.split(",") if t.strip()),
            dropout=float(c.dropout),
        )
    except ValueError as e:
        raise ConfigError(f"Config keys finetune.lora.*: {e}") from None


def validate(config: ml_collections.ConfigDict) -> None:
    """Config checks of a LoRA run that need no files."""
    if spec(config) is not None and not config.init_checkpoint:
        raise ConfigError(
            f"Config key finetune.lora.rank={config.finetune.lora.rank} adapts a trained model: "
            "set init_checkpoint to the run (or imported checkpoint) to adapt."
        )


def facts(s: lora.LoraSpec, base: str) -> dict[str, Any]:
    """What run.json records of a LoRA run (under FACTS_KEY)."""
    return {"base": base, "rank": s.rank, "alpha": s.alpha, "targets": list(s.targets)}


def check_not_adapted(config: ml_collections.ConfigDict, source_facts: dict[str, Any]) -> None:
    """Refuses an init_checkpoint that is a LoRA run (`source_facts`: its run.json): its
    checkpoints hold adapters on another run's model, not a model."""
    if FACTS_KEY in source_facts:
        raise ConfigError(
            f"Config key init_checkpoint={config.init_checkpoint!r} is a LoRA run: its "
            "checkpoints hold adapters on another run's model. Export it merged "
            "(scripts/convert_checkpoint.py --export) and import that, or start from its base, "
            f"{source_facts[FACTS_KEY].get('base')}."
        )


def base_to_adapt(
    config: ml_collections.ConfigDict, workdir: str, run_facts: dict[str, Any], resumes: bool
) -> str:
    """The base a LoRA run adapts: the one its run.json (`run_facts`) recorded once it has
    checkpoints (`resumes`; even if init_checkpoint's run has moved on since), else
    init_checkpoint's."""
    if resumes and run_facts.get(FACTS_KEY):
        return base_of(run_facts, workdir)
    return config.init_checkpoint


def base_of(run_facts: dict[str, Any], workdir: str) -> str:
    """The base checkpoint a LoRA run's run.json names; an error naming it when it is gone."""
    recorded = run_facts.get(FACTS_KEY) or {}
    base = recorded.get("base")
    if not base:
        raise FileNotFoundError(
            f"{os.path.join(workdir, 'run.json')} records no LoRA base checkpoint; the run's "
            "adapters cannot be applied."
        )
    if not os.path.isdir(base):
        raise FileNotFoundError(
            f"The base checkpoint of LoRA run {workdir!r}, {base} (recorded in its run.json), "
            "does not exist: restore it there to use the run's adapters."
        )
    return base


def _flat(tree: Any) -> dict[tuple[str, ...], Any]:
    return dict(traverse_util.flatten_dict(tree))


def split(params: Any, trainable: set[tuple[str, ...]]) -> tuple[Any, Any]:
    """(the leaves at `trainable` paths, the others) of a parameter tree, as two trees."""
    flat = _flat(params)
    train = {p: x for p, x in flat.items() if p in trainable}
    frozen = {p: x for p, x in flat.items() if p not in trainable}
    return traverse_util.unflatten_dict(train), traverse_util.unflatten_dict(frozen)


@dataclasses.dataclass
class Start:
    """A LoRA run's parameters before its state exists (`start`)."""

    frozen: Any  # The base's parameters the model uses, as the run's shardings place them.
    trainable: Any  # Fresh adapters and the task's new parameters.
    base: str  # The base checkpoint's step directory.
    fresh: list[str]  # Paths of the task's new parameters (trained in full).
    dropped: list[str]  # Paths of the base's parameters the model does not use.


def start(
    config: ml_collections.ConfigDict,
    s: lora.LoraSpec,
    model_init: Any,
    base: str,
    shardings: Any,
) -> Start:
    """Reads the base at `base` into the model initialised by `model_init(rng)` (the trainer's
    init_params), adds adapters, and splits what trains from what stays frozen. The fresh
    parameters are drawn from config.seed as a full fine-tune's are; the adapters from a key
    folded from it."""
    init_rng = jax.random.split(jax.random.PRNGKey(config.seed))[0]
    abstract = jax.eval_shape(model_init, init_rng)
    fresh = jax.jit(model_init, out_shardings=shardings(abstract))(init_rng)
    imported = restore_matching_params(base, fresh, shardings)
    make = functools.partial(lora.adapters, params=abstract, spec=s)  # Reads shapes only.
    adapter_rng = jax.random.fold_in(init_rng, 0x10AA)
    adapters = jax.jit(make, out_shardings=shardings(jax.eval_shape(make, adapter_rng)))(
        adapter_rng
    )
    new = {tuple(name.split("/")) for name in imported.fresh}
    trainable, frozen = split(imported.params, new)
    return Start(
        frozen=frozen,
        trainable=join_params(trainable, adapters),
        base=imported.source,
        fresh=imported.fresh,
        dropped=imported.ignored,
    )


def plain_params(
    s: lora.LoraSpec,
    base: str,
    step_dir: str,
    abstract: Any,
    shardings: Any = None,
) -> Any:
    """A LoRA checkpoint's model as plain parameters (adapters merged into the kernels): the
    base read from `base`, the trainable parameters from `step_dir`, both into `shardings` (a
    function of an abstract tree; None: numpy on the host). `abstract`: the model's parameter
    shapes (ptjax.train.state.init_params under jax.eval_shape)."""
    trained = saved_params(step_dir)  # Adapters and new heads: small, read to the host.
    flat_trained = _flat(trained)
    if not any(lora.is_adapter(p) for p in flat_trained):
        raise ValueError(f"{step_dir} holds no LoRA adapters; it is not a LoRA run's checkpoint.")
    make = functools.partial(lora.add_adapters, params=abstract, spec=s)  # Reads shapes only.
    with_adapters = _flat(jax.eval_shape(make, jax.random.PRNGKey(0)))
    want = {p: with_adapters[p] for p in flat_trained if p in with_adapters}
    problems = shape_mismatches(traverse_util.unflatten_dict(want), trained)
    unknown = sorted("/".join_params(p) for p in flat_trained if p not in with_adapters)
    if problems or unknown:
        raise ValueError(
            f"LoRA checkpoint {step_dir} does not fit the run's model and adapters "
            f"(rank {s.rank}, targets {','.join_params(s.targets)}):\n  "
            + "\n  ".join_params(problems + [f"{u}: not a parameter of the model" for u in unknown])
        )
    frozen_abstract = {p: x for p, x in _flat(abstract).items() if p not in flat_trained}
    # Shapes stand for the fresh values: every one of them must come from the base.
    imported = restore_matching_params(
        base, traverse_util.unflatten_dict(frozen_abstract), shardings
    )
    missing = sorted(set(imported.fresh))
    if missing:
        raise ValueError(
            f"LoRA checkpoint {step_dir} and its base {base} do not hold "
            f"{', '.join_params(missing[:10])}."
        )
    if shardings is not None:
        trained = jax.device_put(trained, shardings(trained))
    full = join_params(imported.params, trained)
    if shardings is None:
        return jax.tree.map(np.asarray, lora.merge(full, s))
    kernels_fn = functools.partial(lora.merged_kernels, spec=s)
    kernels = jax.jit(kernels_fn, out_shardings=shardings(jax.eval_shape(kernels_fn, full)))(full)
    return lora.merge(full, s, kernels)
