"""Copies of arrays on several local devices, laid out as `jax.pmap` lays out its outputs
([devices, ...]), and back: what the pmap trainer and a Generator on several devices hold their
parameters as. Below train and decoding alike (it knows only JAX)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

AXIS = "batch"  # The one axis of the replicas; pmap's axis name in ptjax.train.parallel.


def replicate(tree: Any, devices: Sequence[Any] | None = None) -> Any:
    """A copy of each array (host or device) on every local device, laid out as pmap lays out
    its outputs, [devices, ...]. A device array is copied from the device that holds it (a
    global array: this process's copy of it), never through the host."""
    devices = list(devices or jax.local_devices())
    mesh = jax.sharding.Mesh(np.array(devices), (AXIS,))
    stacked = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))

    def put(x: Any) -> jax.Array:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.is_fully_replicated:
                raise ValueError("replicate() takes a global array only when it is replicated.")
            x = x.addressable_shards[0].data  # This process's copy.
        one = x[None] if isinstance(x, jax.Array) else np.asarray(x)[None]
        return jax.make_array_from_single_device_arrays(
            (len(devices), *one.shape[1:]),
            stacked,
            [jax.device_put(one, d) for d in devices],
        )

    return jax.tree.map(put, tree)


def unreplicate(tree: Any) -> Any:
    """The first device's copy of a replicated pytree, as numpy arrays on the host (tests and
    metrics; the trainer never brings a state to the host)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)).reshape(x.shape[1:]), tree)
