"""Pure per-device step functions; `parallel.py` maps them over devices.

Inside a step every reduction across devices goes through `axis_name`, so the same functions
give the same numbers on 1 device and on many for the same global batch.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ptjax.tasks.base import Batch, Task
from ptjax.train.state import TrainState


def step_rng(base: jax.Array, step: jax.Array, axis_name: str) -> jax.Array:
    """A dropout key per (step, device), derived from the run's key: a resume gets the same."""
    return jax.random.fold_in(jax.random.fold_in(base, step), jax.lax.axis_index(axis_name))


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    model: nn.Module,
    task: Task,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    axis_name: str,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One AdamW update on the global mean token loss; returns (new state, metrics).

    The step counter advances even when a non-finite step's update is skipped.
    """
    rng = step_rng(state.rng, state.step, axis_name)
    # The token count over all devices: local sums divided by it are shares of the global mean.
    weights = batch[getattr(task, "weights_key", "weights")]  # The task's loss weights.
    total_weight = jnp.maximum(jax.lax.psum(jnp.sum(weights), axis_name), 1.0)

    def loss_fn(params: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
        loss_sum, sums = task.loss(model, params, batch, rng=rng, train=True)
        return loss_sum / total_weight, sums

    (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.psum(grads, axis_name)
    sums = jax.lax.psum(sums, axis_name)
    loss = jax.lax.psum(loss, axis_name)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A NaN/inf loss or gradient leaves parameters and optimizer state as they were. The flag is
    # a metric, read by the host once per log interval (no per-step sync); the host then stops
    # or counts the skip (config.nonfinite_policy). Same value on every device: both are psums.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    params, opt_state = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old),
        (params, opt_state),
        (state.params, state.opt_state),
    )
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "learning_rate": schedule(state.step),
        "nonfinite": (~finite).astype(jnp.float32),
        **sums,
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics


def eval_step(
    params: Any, batch: Batch, *, model: nn.Module, task: Task, axis_name: str
) -> dict[str, jax.Array]:
    """Metric sums of one eval batch over all devices (padding has weight 0)."""
    _, sums = task.loss(model, params, batch, rng=jax.random.PRNGKey(0), train=False)
    return jax.lax.psum(sums, axis_name)
