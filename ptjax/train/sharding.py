"""Where each array lives on a (data, fsdp, tensor) device mesh: the one place for the rules.

Parameters are matched by their path to *logical* axes (embed, heads, mlp, vocab, ...), and
logical axes map to mesh axes: FSDP shards the model width (`embed`), tensor parallelism shards
attention heads, the feed-forward width and the vocabulary; batches are split over data x fsdp.
The rules match the end of a path, so the optimizer state's moments (whose paths end with their
parameter's) are sharded like their parameters. A dimension that does not divide over its mesh
axis is replicated instead; anything no rule names (norms, output biases, T5's relative
position tables, step counters) is replicated. A scanned block stack (model.scan_layers) is
sharded layer by layer as the unscanned one, its leading layer axis replicated.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ptjax.models import scan

MESH_AXES = ("data", "fsdp", "tensor")

# Parameter path (a regex searched in "a/b/c") -> logical axis of each dimension.
PARAM_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"(query|key|value)/kernel$", ("embed", "heads", "kv")),  # [d_model, heads, head_dim]
    (r"(query|key|value)/bias$", ("heads", "kv")),
    (r"(attn|attention)/out/kernel$", ("heads", "kv", "embed")),  # [heads, head_dim, d_model]
    (r"/wi(_0|_1)?/kernel$", ("embed", "mlp")),  # [d_model, d_ff]
    (r"/wi(_0|_1)?/bias$", ("mlp",)),
    (r"/wo/kernel$", ("mlp", "embed")),  # [d_ff, d_model]
    (r"(wte|word_embeddings|shared)/embedding$", ("vocab", "embed")),  # [vocab, d_model]
    (r"(wpe|position_embeddings|token_type_embeddings)/embedding$", (None, "embed")),
    (r"lm_head/kernel$", ("embed", "vocab")),
)

# A scanned block stack (model.scan_layers, ptjax.models.scan): its arrays carry one leading
# "layers" axis before those of the rules above.
_SCANNED = re.compile(rf"(^|/)({'|'.join(scan.STACKS)})/")

# Logical axis -> mesh axis (None: replicated).
LOGICAL_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
    "kv": None,
    "layers": None,  # Every device holds its shard of every layer.
}


@contextlib.contextmanager
def activation_rules(mesh: Mesh) -> Iterator[None]:
    """While a step is traced: the model's activation constraints (`layers.constrain_batch`)
    resolve logical axes by LOGICAL_RULES on `mesh`."""
    rules = tuple((k, v) for k, v in LOGICAL_RULES.items())
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
        yield


def granules(devices: Sequence[Any]) -> tuple[str, int]:
    """What a DCN mesh axis spans over `devices`, and how many of them there are: TPU slices
    (the devices' `slice_index`) on TPU, processes elsewhere."""
    if devices[0].platform == "tpu" and hasattr(devices[0], "slice_index"):
        return "slice", len({d.slice_index for d in devices})
    return "process", len({d.process_index for d in devices})


def device_grid(
    shape: Sequence[int], devices: Sequence[Any], dcn_shape: Sequence[int] = (1, 1, 1)
) -> np.ndarray:
    """`devices` laid out as an array of `shape` by `jax.experimental.mesh_utils`.

    On TPU the layout follows the chips' torus, giving the last axes (tensor, then fsdp) the
    most links; on CPU and GPU it keeps the devices' order. `dcn_shape`: how many granules
    (`granules`: TPU slices, else processes) each axis spans. Each granule then holds one
    `shape / dcn_shape` block, so only those axes cross the slower network between granules.
    """
    shape, dcn_shape = tuple(shape), tuple(dcn_shape)
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"Mesh shape {shape} (data, fsdp, tensor) needs {math.prod(shape)} devices; there "
            f"are {len(devices)}."
        )
    kind, count = granules(devices)
    if math.prod(dcn_shape) == 1 and (kind == "process" or count == 1):  # One fast network.
        return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    if any(size % dcn for size, dcn in zip(shape, dcn_shape, strict=True)):
        raise ValueError(f"DCN shape {dcn_shape} does not divide mesh shape {shape}.")
    if math.prod(dcn_shape) != count:
        raise ValueError(
            f"DCN shape {dcn_shape} spans {math.prod(dcn_shape)} {kind}(s); the devices are "
            f"in {count}."
        )
    return mesh_utils.create_hybrid_device_mesh(
        tuple(size // dcn for size, dcn in zip(shape, dcn_shape, strict=True)),
        dcn_shape,
        devices,
        process_is_granule=kind == "process",
        allow_split_physical_axes=True,
    )


def make_mesh(
    shape: Sequence[int],
    devices: Sequence[Any] | None = None,
    dcn_shape: Sequence[int] = (1, 1, 1),
) -> Mesh:
    """A (data, fsdp, tensor) mesh of `shape` over `devices` (default: all devices), laid out
    by `device_grid` (`dcn_shape`: how many TPU slices or processes each axis spans)."""
    devices = list(devices or jax.devices())
    return Mesh(device_grid(shape, devices, dcn_shape), MESH_AXES)


def _axis_size(mesh: Mesh, axis: str | tuple[str, ...] | None) -> int:
    if axis is None:
        return 1
    names = (axis,) if isinstance(axis, str) else axis
    return int(np.prod([mesh.shape[n] for n in names]))


def logical_axes(path: str, ndim: int) -> tuple[str | None, ...]:
    """The logical axes of the array at `path` ('a/b/c'): the first matching rule's, after a
    leading "layers" axis in a scanned stack; else none."""
    layers = ("layers",) if ndim and _SCANNED.search(path) else ()
    for pattern, axes in PARAM_RULES:
        if re.search(pattern, path) and len(layers + axes) == ndim:
            return layers + axes
    return layers + (None,) * (ndim - len(layers))


def partition_spec(path: str, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Mesh axes of each dimension; a dimension that does not divide is replicated."""
    spec = []
    for size, logical in zip(shape, logical_axes(path, len(shape)), strict=True):
        axis = LOGICAL_RULES.get(logical) if logical else None
        spec.append(axis if axis is not None and size % _axis_size(mesh, axis) == 0 else None)
    return PartitionSpec(*spec)


def _path_string(path: tuple) -> str:
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs: a TrainState,
    params, ...) by the rules above."""

    def one(path: tuple, leaf: Any) -> NamedSharding:
        spec = partition_spec(_path_string(path), np.shape(leaf), mesh)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh, steps_axis: bool = False) -> NamedSharding:
    """Rows of a global batch [global_batch, ...] split over the data and fsdp axes (steps_axis:
    of batches stacked [k, global_batch, ...], the steps axis unsplit)."""
    if steps_axis:
        return NamedSharding(mesh, PartitionSpec(None, LOGICAL_RULES["batch"]))
    return NamedSharding(mesh, PartitionSpec(LOGICAL_RULES["batch"]))
