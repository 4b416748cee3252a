"""The train state: what an exact resume needs, and nothing else; and how a fresh one is made.

Free of the input pipeline (no TensorFlow), so that a step can be built and timed where only
JAX is installed (scripts/benchmark.py on an accelerator image).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: updates applied so far.
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32[2]: the run's base key; per-step keys are folded from it.

    @classmethod
    def create(cls, params: Any, tx: Any, rng: jax.Array) -> TrainState:
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)


def init_params(config: Any, model: Any, rng: jax.Array) -> Any:
    """The model's parameters as `config.seed`'s run initialises them (from `rng`)."""
    dummy = jnp.zeros((1, config.seq_len), jnp.int32)
    return model.init(rng, dummy, dummy, dummy)["params"]


def init_state(config: Any, model: Any, tx: Any) -> TrainState:
    """A fresh state from config.seed: parameters, optimizer state, step 0, the run's key."""
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    return TrainState.create(init_params(config, model, init_rng), tx, state_rng)
