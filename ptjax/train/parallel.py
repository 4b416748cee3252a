"""Where parallelism lives: the step functions wrapped for `jax.pmap` over local devices, or
for `jax.jit` with shardings on a (data, fsdp, tensor) mesh (`ptjax.train.sharding`).

pmap: batches arrive shaped [local_devices, per_device_batch, ...]. The state is replicated once
after init/restore and stays on the devices (pmap outputs are already laid out per device, so
nothing is replicated or unreplicated per step).
mesh: the same step functions (with `axis_name=None`) on global arrays: the state sharded by
the rules of `sharding.py`, batches [global_batch, ...] split over data x fsdp. Metrics come
back with a leading axis of 1, shaped as pmap's are, so the host code reads both alike.
Evals that bring outputs per example to the host (decoding, QA spans) use `predict_step`, which
hands each process its own rows back in the pipeline's layout in both modes.

Checkpoints save and restore *global* arrays (`Parallel.shardings`, `Parallel.global_view`):
on a mesh the state as it is sharded, each process holding and writing only its own shards;
under pmap one copy per process (every process's devices hold the same replicated state). The
state never comes whole to the host.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from ptjax import backend
from ptjax.errors import ConfigError
from ptjax.models import attention
from ptjax.placement import replicate, unreplicate  # noqa: F401 - re-exported.

AXIS = "batch"


def pmap_train_step(
    step_fn: Callable,
    devices: Sequence[Any] | None = None,
    steps_axis: bool = False,
    **kwargs: Any,
) -> Callable:
    """pmap over the batch axis (all local devices by default), donating the old state.
    steps_axis: batches [devices, k, per_device_batch, ...] run as k steps (over_steps), with
    metrics [devices, k, ...]."""
    fn = functools.partial(step_fn, axis_name=AXIS, **kwargs)
    if steps_axis:
        fn = over_steps(fn)
    return jax.pmap(fn, axis_name=AXIS, donate_argnums=(0,), devices=devices)


def over_steps(step_fn: Callable) -> Callable:
    """`step_fn(state, batch)` over batches with a leading steps axis [k, ...]: k steps in one
    call, as a `lax.scan` when k > 1 (one XLA execution). Metrics come back stacked, [k, ...].

    Each step is `step_fn` exactly, taking its dropout keys and learning rate from the state's
    step counter, so k steps per call follow the same path as k calls. Fewer, longer executions
    dispatch less and, on XLA:CPU, allocate the step's working memory (about 1 GB for the
    'bench' GPT) once per call instead of once per step.
    """

    def run(state: Any, batches: Any) -> tuple[Any, Any]:
        if jax.tree.leaves(batches)[0].shape[0] == 1:  # The plain step's program.
            state, metrics = step_fn(state, jax.tree.map(lambda x: x[0], batches))
            return state, jax.tree.map(lambda x: x[None], metrics)
        return jax.lax.scan(step_fn, state, batches)

    return run


def stack_batches(batches: Sequence[Any]) -> Any:
    """Batches as the pipeline yields them, [local_devices, per_device_batch, ...], stacked as
    Parallel.train_steps takes them: [local_devices, k, per_device_batch, ...]."""
    return jax.tree.map(lambda *xs: np.stack(xs, axis=1), *batches)


def pmap_eval_step(
    step_fn: Callable, devices: Sequence[Any] | None = None, **kwargs: Any
) -> Callable:
    fn = functools.partial(step_fn, axis_name=AXIS, **kwargs)
    return jax.pmap(fn, axis_name=AXIS, devices=devices)


class Parallel:
    """The trainer's one handle on the parallel mode: where the state lives, how steps run and
    how arrays come back to the host. `mesh` None: pmap over the local devices."""

    def __init__(
        self,
        mesh: jax.sharding.Mesh | None = None,
        forms: str | None = None,
        attention_choice: attention.Choice | None = None,
    ):
        """`forms`: what the steps are traced with (ptjax.backend.CPU or XLA; None: not set,
        the default backend decides); `attention_choice`: their attention kernel
        (ptjax.models.attention; None: XLA)."""
        self.mesh = mesh
        self.forms = forms
        self.attention = attention_choice

    @property
    def devices(self) -> list[Any]:
        """The devices this process's steps run on."""
        if self.mesh is None:
            return list(jax.local_devices())
        return [d for d in self.mesh.devices.flat if d.process_index == jax.process_index()]

    def _traced(self, fn: Callable) -> Callable:
        return attention.traced_with(self.attention, backend.traced_with(self.forms, fn))

    def choose_attention(self, setting: str) -> None:
        """Sets the steps' attention kernel from config model.attention on this Parallel's
        devices (logged); on a mesh the kernel runs per shard of its batch and head axes."""
        self.attention = attention_on(attention.choose(setting, self.devices).kernel, self.mesh)

    def init(self, init_fn: Callable[[], Any], abstract_state: Any) -> Any:
        """A fresh state made in place as global arrays (`shardings`): on a mesh sharded,
        never whole on one device. `place` lays it out for the steps."""
        return jax.jit(self._traced(init_fn), out_shardings=self.shardings(abstract_state))()

    def shardings(self, tree: Any) -> Any:
        """Where the arrays of `tree` (a state or params, arrays or shapes) live as global
        arrays, as checkpoints save and restore them: on a mesh sharded by sharding.py's
        rules; under pmap replicated over one device of each process."""
        if self.mesh is not None:
            from ptjax.train import sharding

            return sharding.tree_shardings(tree, self.mesh)
        one_each = _one_device_per_process()
        return jax.tree.map(lambda _: one_each, tree)

    def place(self, tree: Any) -> Any:
        """A state or params (host arrays, or global arrays as `init` and restores give them)
        laid out as the steps take them: sharded on the mesh, or a copy on every local device
        (pmap). Device arrays are copied between devices, never through the host."""
        return replicate(tree) if self.mesh is None else place_on_mesh(tree, self.mesh)

    def global_view(self, tree: Any) -> Any:
        """A placed state or params as global arrays (`shardings`), what checkpoints save: on
        a mesh the arrays themselves; under pmap the copy on each process's first local device
        (its [1, ...] buffer reshaped there; the host is not involved)."""
        if self.mesh is not None:
            return tree
        one_each = _one_device_per_process()

        def view(x: jax.Array) -> jax.Array:
            local = next(s for s in x.addressable_shards if s.device in one_each.device_set)
            return jax.make_array_from_single_device_arrays(
                x.shape[1:], one_each, [local.data.reshape(x.shape[1:])]
            )

        return jax.tree.map(view, tree)

    def local_copy(self, tree: Any) -> Any:
        """Placed params as single-device arrays on this process's first local device (pmap;
        a copy there): what a Generator on one device decodes with, without a collective."""
        first = jax.local_devices()[0]
        return jax.tree.map(
            lambda x: next(s.data for s in x.addressable_shards if s.device == first)[0], tree
        )

    def compile(self, fn: Callable) -> Callable:
        """`fn` of placed arrays (params as `place` lays them out) as one compiled program
        (build it once, call it often), its results laid out as the steps take them: per
        device under pmap; sharded by the rules on the mesh."""
        fn = self._traced(fn)
        if self.mesh is None:
            return jax.pmap(fn)
        from ptjax.train import sharding

        mesh = self.mesh

        def placed(tree: Any) -> Any:
            out = fn(tree)
            return jax.lax.with_sharding_constraint(out, sharding.tree_shardings(out, mesh))

        return jax.jit(placed)

    def train_steps(self, step_fn: Callable, abstract_state: Any, **kwargs: Any) -> Callable:
        """The train step `step_fn` (state donated) taking k batches stacked as [local_devices,
        k, per_device_batch, ...] (k >= 1, any k; each new k compiles once) and running them in
        one call (over_steps). Metrics come back [devices or 1, k, ...]."""
        step_fn = self._traced(step_fn)
        if self.mesh is None:
            return pmap_train_step(step_fn, steps_axis=True, **kwargs)
        step = mesh_train_step(step_fn, self.mesh, abstract_state, steps_axis=True, **kwargs)
        return _taking_local_batches(step, self.mesh, steps_axis=True)

    def eval_step(self, step_fn: Callable, **kwargs: Any) -> Callable:
        step_fn = self._traced(step_fn)
        if self.mesh is None:
            return pmap_eval_step(step_fn, **kwargs)
        return _taking_local_batches(mesh_eval_step(step_fn, self.mesh, **kwargs), self.mesh)

    def predict_step(self, fn: Callable) -> Callable:
        """`fn(params, batch) -> (sums, rows)` over the devices, for evals that bring outputs per
        example to the host (decoded tokens, span logits). `fn` sees rows of the batch, never an
        axis name: its `sums` are added over all devices and processes here (a psum under pmap;
        on a mesh its arrays are global, so they already are).

        Takes params as `place` leaves them and a batch as the pipeline yields it,
        [local_devices, per_device_batch, ...]. Returns (sums with a leading device axis whose
        [0] is the total, as `eval_step`'s; rows as numpy: this process's rows in its batch's
        layout [local_devices, per_device_batch, ...]).
        """
        fn = self._traced(fn)
        if self.mesh is None:
            step = jax.pmap(lambda params, batch: _summed(fn(params, batch), AXIS), axis_name=AXIS)
            return lambda params, batch: _rows_to_host(step(params, batch), np.asarray)
        return mesh_predict_step(fn, self.mesh)


def create(
    parallelism: Any, kernels: str | None = None, attention_setting: str | None = None
) -> Parallel:
    """The run's Parallel from config.parallelism; a mesh must cover every device, and its DCN
    axes (dcn_data, dcn_fsdp) must divide its axes and span every TPU slice or process.
    `kernels` (config model.kernels): the forms its steps take on its devices (ptjax.backend);
    `attention_setting` (config model.attention): their attention kernel (None: not set)."""
    par = _create(parallelism)
    if kernels is not None:
        par.forms = backend.resolve(kernels, par.devices)
    if attention_setting is not None:
        par.choose_attention(attention_setting)
    return par


def attention_on(kernel: str, mesh: jax.sharding.Mesh | None) -> attention.Choice:
    """Attention `kernel` for steps on `mesh` (None: pmap), splitting batch and heads as the
    activations are split (sharding.LOGICAL_RULES)."""
    if mesh is None:
        return attention.Choice(kernel)
    from ptjax.train import sharding

    def axes(logical: str) -> tuple[str, ...]:
        mesh_axes = sharding.LOGICAL_RULES[logical]
        return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())

    return attention.Choice(kernel, mesh, axes("batch"), axes("heads"))


def _create(parallelism: Any) -> Parallel:
    if parallelism.mode == "pmap":
        return Parallel()
    from ptjax.train import sharding

    fsdp, tensor = parallelism.fsdp, parallelism.tensor
    data = parallelism.data if parallelism.data > 0 else jax.device_count() // (fsdp * tensor)
    if data * fsdp * tensor != jax.device_count():
        raise ConfigError(
            f"Config keys parallelism.data={parallelism.data}, fsdp={fsdp}, tensor={tensor}: "
            f"the mesh must cover all {jax.device_count()} devices (data=-1 takes the rest)."
        )
    dcn_data, dcn_fsdp = parallelism.dcn_data, parallelism.dcn_fsdp
    for axis, dcn, size in (("data", dcn_data, data), ("fsdp", dcn_fsdp, fsdp)):
        if size % dcn:
            given = getattr(parallelism, axis)
            raise ConfigError(
                f"Config key parallelism.dcn_{axis}={dcn} must divide the {axis} axis, {size} "
                f"devices long (parallelism.{axis}={given}): each of the {dcn} slices or "
                "processes it spans holds an equal part of it."
            )
    kind, count = sharding.granules(jax.devices())
    if dcn_data * dcn_fsdp != count and (dcn_data * dcn_fsdp > 1 or kind == "slice"):
        what = "TPU slices (the devices' slice_index)" if kind == "slice" else "processes"
        raise ConfigError(
            f"Config keys parallelism.dcn_data={dcn_data} x parallelism.dcn_fsdp={dcn_fsdp} "
            f"must equal the number of {what} the devices span: {count}."
        )
    return Parallel(sharding.make_mesh((data, fsdp, tensor), dcn_shape=(dcn_data, dcn_fsdp, 1)))


def _taking_local_batches(
    step: Callable, mesh: jax.sharding.Mesh, steps_axis: bool = False
) -> Callable:
    """`step` taking this process's batch as the pipeline yields it, [local_devices,
    per_device_batch, ...], placed as one global array [global_batch, ...] over the mesh.
    steps_axis: batches stacked [local_devices, k, per_device_batch, ...] become [k,
    global_batch, ...]."""
    from ptjax.train import sharding

    rows = sharding.batch_sharding(mesh, steps_axis)

    def to_global(x: Any) -> jax.Array:
        x = np.asarray(x)
        if steps_axis:
            x = np.swapaxes(x, 0, 1)  # [k, local_devices, per_device_batch, ...]
            return jax.make_array_from_process_local_data(
                rows, x.reshape(x.shape[0], -1, *x.shape[3:])
            )
        return jax.make_array_from_process_local_data(rows, x.reshape(-1, *x.shape[2:]))

    return lambda first, batch: step(first, jax.tree.map(to_global, batch))


def mesh_train_step(
    step_fn: Callable,
    mesh: jax.sharding.Mesh,
    abstract_state: Any,
    steps_axis: bool = False,
    **kwargs: Any,
) -> Callable:
    """jit on `mesh`: the state (sharded by sharding.py's rules) is donated and stays sharded.
    steps_axis: batches [k, global_batch, ...] run as k steps (over_steps)."""
    from ptjax.train import sharding

    fn = functools.partial(step_fn, axis_name=None, **kwargs)
    if steps_axis:
        fn = over_steps(fn)
    state_shardings = sharding.tree_shardings(abstract_state, mesh)

    def step(state: Any, batch: Any) -> tuple[Any, Any]:
        with sharding.activation_rules(mesh):
            state, metrics = fn(state, batch)
        return state, jax.tree.map(lambda x: x[None], metrics)  # [1, ...] like pmap's.

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(
        step,
        in_shardings=(state_shardings, sharding.batch_sharding(mesh, steps_axis)),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )


def mesh_eval_step(step_fn: Callable, mesh: jax.sharding.Mesh, **kwargs: Any) -> Callable:
    from ptjax.train import sharding

    fn = functools.partial(step_fn, axis_name=None, **kwargs)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(
        lambda params, batch: jax.tree.map(lambda x: x[None], fn(params, batch)),
        in_shardings=(None, sharding.batch_sharding(mesh)),
        out_shardings=replicated,
    )


def mesh_predict_step(fn: Callable, mesh: jax.sharding.Mesh) -> Callable:
    """`Parallel.predict_step` on `mesh`: jit over the global batch; each process gets back the
    rows of its own local batch."""
    from ptjax.train import sharding

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    rows = sharding.batch_sharding(mesh)

    def run(params: Any, batch: Any) -> tuple[Any, Any]:
        with sharding.activation_rules(mesh):
            sums, out = fn(params, batch)
        return jax.tree.map(lambda x: x[None], sums), out  # Sums [1, ...] like pmap's.

    step = _taking_local_batches(
        jax.jit(run, in_shardings=(None, rows), out_shardings=(replicated, rows)), mesh
    )

    def call(params: Any, batch: Any) -> tuple[Any, Any]:
        devices = np.shape(jax.tree.leaves(batch)[0])[0]

        def local(x: jax.Array) -> np.ndarray:  # [global_rows, ...] -> [devices, per_device, ...]
            return local_rows(x).reshape(devices, -1, *x.shape[1:])

        return _rows_to_host(step(params, batch), local)

    return call


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a global array split by rows, in order: the inverse of
    `jax.make_array_from_process_local_data` (each row block once, also where the tensor axis
    holds copies of it)."""
    blocks = {shard.index[0].start or 0: shard.data for shard in x.addressable_shards}
    return np.concatenate([np.asarray(blocks[start]) for start in sorted(blocks)])


def _summed(outputs: tuple[Any, Any], axis_name: str) -> tuple[Any, Any]:
    sums, rows = outputs
    return jax.lax.psum(sums, axis_name), rows


def _rows_to_host(outputs: tuple[Any, Any], to_host: Callable) -> tuple[Any, Any]:
    sums, rows = outputs
    return sums, jax.tree.map(to_host, rows)


def place_on_mesh(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Puts a pytree (a TrainState, params; host or device arrays) onto `mesh` by sharding.py's
    rules (arrays already placed so stay as they are)."""
    from ptjax.train import sharding

    return jax.device_put(tree, sharding.tree_shardings(tree, mesh))


def _one_device_per_process() -> jax.sharding.NamedSharding:
    """Replicated over the first local device of every process: one copy of a pmap state per
    process, a global array that Orbax writes once (process 0's copy)."""
    firsts: dict[int, Any] = {}
    for device in jax.devices():
        firsts.setdefault(device.process_index, device)
    mesh = jax.sharding.Mesh(np.array([firsts[i] for i in sorted(firsts)]), (AXIS,))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
