"""The train state: what an exact resume needs, and nothing else; and how a fresh one is made.

Free of the input pipeline (no TensorFlow), so that a step can be built and timed where only
JAX is installed (scripts/benchmark.py on an accelerator image).
"""

from __future__ import annotations

import contextlib
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import traverse_util

from ptjax.models import lora


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: updates applied so far.
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32[2]: the run's base key; per-step keys are folded from it.

    @classmethod
    def create(cls, params: Any, tx: Any, rng: jax.Array) -> TrainState:
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)

    def model_params(self, params: Any) -> Any:
        """The model's parameter tree given the trainable `params` (here: all of them)."""
        return params

    def applied(self, train: bool) -> contextlib.AbstractContextManager:
        """What the model is applied under (here: nothing)."""
        del train
        return contextlib.nullcontext()

    def checkpointed(self) -> TrainState:
        """What a checkpoint holds of the state."""
        return self


@flax.struct.dataclass
class AdaptedState(TrainState):
    """A LoRA run's state (ptjax.train.adaptation): `params` are the adapters and the task's new
    parameters, the only ones with gradients and optimizer state; `frozen` is the rest of the
    model, never updated and never checkpointed (the run records where it comes from)."""

    frozen: Any = None
    spec: lora.LoraSpec | None = flax.struct.field(pytree_node=False, default=None)

    @classmethod
    def adapting(cls, state: TrainState, frozen: Any, spec: lora.LoraSpec) -> AdaptedState:
        return cls(state.step, state.params, state.opt_state, state.rng, frozen, spec)

    def model_params(self, params: Any) -> Any:
        return join_params(self.frozen, params)

    def applied(self, train: bool) -> contextlib.AbstractContextManager:
        return lora.applied(self.spec, train)

    def checkpointed(self) -> TrainState:
        return TrainState(self.step, self.params, self.opt_state, self.rng)


def join_params(frozen: Any, trainable: Any) -> Any:
    """The model's parameter tree from its frozen and trainable parts."""
    flat = dict(traverse_util.flatten_dict(frozen))
    flat.update(traverse_util.flatten_dict(trainable))
    return traverse_util.unflatten_dict(flat)


def init_params(config: Any, model: Any, rng: jax.Array) -> Any:
    """The model's parameters as `config.seed`'s run initialises them (from `rng`)."""
    dummy = jnp.zeros((1, config.seq_len), jnp.int32)
    return model.init(rng, dummy, dummy, dummy)["params"]


def init_state(config: Any, model: Any, tx: Any) -> TrainState:
    """A fresh state from config.seed: parameters, optimizer state, step 0, the run's key."""
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    return TrainState.create(init_params(config, model, init_rng), tx, state_rng)
