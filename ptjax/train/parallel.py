"""Where parallelism lives: the step functions wrapped for `jax.pmap` over local devices.

Batches arrive shaped [local_devices, per_device_batch, ...]. The state is replicated once
after init/restore and stays on the devices (pmap outputs are already laid out per device, so
nothing is replicated or unreplicated per step); it comes to the host only to be saved.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

AXIS = "batch"


def pmap_train_step(
    step_fn: Callable, devices: Sequence[Any] | None = None, **kwargs: Any
) -> Callable:
    """pmap over the batch axis (all local devices by default), donating the old state."""
    fn = functools.partial(step_fn, axis_name=AXIS, **kwargs)
    return jax.pmap(fn, axis_name=AXIS, donate_argnums=(0,), devices=devices)


def pmap_eval_step(
    step_fn: Callable, devices: Sequence[Any] | None = None, **kwargs: Any
) -> Callable:
    fn = functools.partial(step_fn, axis_name=AXIS, **kwargs)
    return jax.pmap(fn, axis_name=AXIS, devices=devices)


def replicate(tree: Any, devices: Sequence[Any] | None = None) -> Any:
    """Copies a host pytree to every local device, laid out as pmap lays out its outputs."""
    devices = list(devices or jax.local_devices())
    mesh = jax.sharding.Mesh(np.array(devices), (AXIS,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))

    def put(x: Any) -> jax.Array:
        x = np.asarray(x)
        return jax.device_put(np.broadcast_to(x[None], (len(devices), *x.shape)), sharding)

    return jax.tree.map(put, tree)


def unreplicate(tree: Any) -> Any:
    """The first device's copy of a replicated pytree, as numpy arrays on the host."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)).reshape(x.shape[1:]), tree)
