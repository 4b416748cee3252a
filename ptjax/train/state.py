"""The train state: what an exact resume needs, and nothing else."""

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
