"""Pure per-device step functions; `parallel.py` maps them over devices.

Inside a step every reduction across devices goes through `axis_name`, so the same functions
give the same numbers on 1 device and on many for the same global batch. Under `jax.jit` on a
device mesh (`axis_name=None`) the arrays are global and the reductions are plain sums.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ptjax.tasks.base import Batch, Task
from ptjax.train.state import TrainState


def step_rng(base: jax.Array, step: jax.Array, axis_name: str | None) -> jax.Array:
    """A dropout key per (step, device), derived from the run's key: a resume gets the same.

    Under jit on a mesh (axis_name None) one key serves the global batch (device index 0).
    """
    device = 0 if axis_name is None else jax.lax.axis_index(axis_name)
    return jax.random.fold_in(jax.random.fold_in(base, step), device)


def psum(tree: Any, axis_name: str | None) -> Any:
    """Sum over the devices of a pmap; the identity on the global arrays of a mesh jit."""
    return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
    """[rows, ...] -> [num_microbatches, rows / num_microbatches, ...], strided: microbatch k
    holds rows k, k + num_microbatches, ... so that, on a mesh where the rows are split over
    devices, every device holds its share of every microbatch.
    """

    def split(x: jax.Array) -> jax.Array:
        if x.shape[0] % num_microbatches:
            raise ValueError(
                f"A batch leaf of {x.shape[0]} rows does not split into num_microbatches="
                f"{num_microbatches}; per_device_batch_size must be a multiple of it."
            )
        x = x.reshape(x.shape[0] // num_microbatches, num_microbatches, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    model: nn.Module,
    task: Task,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    axis_name: str | None,
    num_microbatches: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One AdamW update on the global mean token loss; returns (new state, metrics).

    With `num_microbatches` > 1 the per-device batch is cut into that many slices, run one
    after the other in a `lax.scan` (activations of one slice alive at a time); their gradients
    and metric sums are summed and one update is applied. Every slice's loss is divided by the
    token count of the whole global batch, so the sum is the big batch's gradient (up to
    float round-off). Dropout keys are folded with the slice index (a different, equally
    valid dropout stream than the unsplit batch's).
    The step counter advances even when a non-finite step's update is skipped.
    """
    rng = step_rng(state.rng, state.step, axis_name)
    # The token count over all devices: local sums divided by it are shares of the global mean.
    weights = batch[task.weights_key]  # The task's loss weights.
    total_weight = jnp.maximum(psum(jnp.sum(weights), axis_name), 1.0)

    def loss_fn(params: Any, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
        # A LoRA run (AdaptedState) differentiates its adapters and new head only, the frozen
        # base joined in as a constant, the adapters applied inside the model's projections.
        with state.applied(train=True):
            model_params = state.model_params(params)
            loss_sum, sums = task.loss(model, model_params, batch, rng=rng, train=True)
        return loss_sum / total_weight, sums

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if num_microbatches == 1:
        (loss, sums), grads = grad_fn(state.params, batch, rng)
    else:
        micro = split_microbatches(batch, num_microbatches)

        def accumulate(carry: Any, xs: tuple[jax.Array, Batch]) -> tuple[Any, None]:
            index, microbatch = xs
            out = grad_fn(state.params, microbatch, jax.random.fold_in(rng, index))
            return jax.tree.map(jnp.add, carry, out), None

        # Zeros shaped like one slice's (loss, sums) and gradients (float32 like the params).
        zeros = jax.tree.map(
            lambda s: jnp.zeros(s.shape, s.dtype),
            jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], micro), rng),
        )
        ((loss, sums), grads), _ = jax.lax.scan(
            accumulate, zeros, (jnp.arange(num_microbatches), micro)
        )
    grads, sums, loss = psum((grads, sums, loss), axis_name)
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
    params: Any, batch: Batch, *, model: nn.Module, task: Task, axis_name: str | None
) -> dict[str, jax.Array]:
    """Metric sums of one eval batch over all devices (padding has weight 0)."""
    _, sums = task.loss(model, params, batch, rng=jax.random.PRNGKey(0), train=False)
    return psum(sums, axis_name)
