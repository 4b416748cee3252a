"""Pre-flight: what a run's train step costs per device, found by compiling it, not running it.

`estimate(config)` builds the trainer's pmap train step for the configured model, task, batch,
dtype, remat, layer scan and microbatching, lowers it with abstract arguments
(`jax.ShapeDtypeStruct`s from `jax.eval_shape`: no parameter is allocated) and compiles it ahead
of time, timing both. XLA's own `memory_analysis()` of that executable gives the per-device bytes
of arguments (state + batch), outputs, temporaries and aliased (donated) buffers;
`cost_analysis()` gives its FLOPs, next to the model's analytical FLOPs per token
(`ModelFamily.flops_per_token`): the two differ by what the analytical count leaves out (softmax,
norms, the optimizer) and by what the model skips (BERT's masked-LM head projects only the
masked positions). `largest_batch` bisects the
per-device batch against a memory budget.

The figures are those of the backend that compiles: on the accelerator itself they are XLA's
exact buffer assignment for it; compiled on a CPU for another chip they are an approximation
(other fusion, layouts and padding; XLA:CPU, for one, shows neither remat's nor bf16's saving).
The pmap step replicates the state, so its per-device figures do not depend on the number of
devices; with parallelism.mode='mesh' the step is compiled for the configured mesh over this
machine's devices (fake CPU devices will do: XLA_FLAGS=--xla_force_host_platform_device_count=N),
so FSDP's and tensor parallelism's savings show in the per-device arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import ml_collections

from ptjax import backend, models, tasks
from ptjax import run as run_lib
from ptjax.models import attention, lora
from ptjax.train import accounting, adaptation, optim, parallel, sharding, steps
from ptjax.train.state import AdaptedState, TrainState

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Per-device figures of one compiled train step."""

    per_device_batch_size: int
    num_params: int
    argument_bytes: int  # Train state + batch.
    output_bytes: int  # New state + metrics.
    temp_bytes: int  # Activations, gradients, optimizer temporaries.
    alias_bytes: int  # Outputs written into donated arguments (the state): counted once.
    generated_code_bytes: int
    # XLA's count for the compiled step (per device). XLA counts a loop's body once, so the
    # count is multiplied by num_microbatches (the microbatch scan); with model.scan_layers the
    # layers are loops too, and the count holds one layer per stack (the model count does not).
    flops_per_step: float
    model_flops_per_step: float  # Analytical: flops_per_token x tokens per device per step.
    tokens_per_step: int  # Per device.
    # Seconds to trace, lower and compile the step on this machine: what model.scan_layers
    # saves on deep models (one compiled block instead of one per layer).
    compile_seconds: float = 0.0
    trained_params: int = 0  # Those with gradients and optimizer state (a LoRA run's adapters).

    @property
    def peak_bytes(self) -> int:
        """Arguments + outputs + temporaries, donated buffers counted once."""
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "peak_bytes": self.peak_bytes}


def batch_spec(config: ml_collections.ConfigDict, rows: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of one device's train batch of config.task with `rows` rows: what the
    task's input pipeline yields per device (without building the pipeline)."""
    return tasks.TASKS[config.task]().batch_spec(config, rows)


def _task_and_head(config: ml_collections.ConfigDict) -> tuple[Any, dict[str, Any]]:
    """The run's task and its head's size; classification reads its labels from the data
    unless model.num_labels is set."""
    task = tasks.TASKS[config.task]()
    head_kwargs = task.head_kwargs(config)
    if head_kwargs is None:  # Only the data can tell (classification's labels).
        head_kwargs = task.setup(config, data_dir=run_lib.default_data_dir(config))
    return task, head_kwargs


def _with_device_axis(tree: Any, devices: int = 1) -> Any:
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct((devices, *s.shape), s.dtype), tree)


def task_of(config: ml_collections.ConfigDict) -> Any:
    """The run's task object (classification's labels read as `lower_train_step` reads them)."""
    return _task_and_head(config)[0]


def train_step_args(
    config: ml_collections.ConfigDict,
    per_device_batch_size: int | None = None,
    forms: str | None = None,
    attention_kernel: str | None = None,
) -> tuple[Any, Any, Any]:
    """(the trainer's train step as its Parallel builds it, its abstract state, its abstract
    batch): nothing of the model's size is allocated. pmap: the per-device step on one device,
    arguments with a leading device axis of 1; mesh: the global step on config.parallelism's
    mesh, arguments carrying their shardings. `forms`: what the step is traced with
    (ptjax.backend; None: the default backend decides); `attention_kernel`: its attention
    (ptjax.models.attention; None: XLA)."""
    rows = per_device_batch_size or config.per_device_batch_size
    task, head_kwargs = _task_and_head(config)
    model, _ = models.build(config, **head_kwargs)
    from ptjax.train.trainer import init_params, init_state  # The trainer's own init.

    abstract_params = jax.eval_shape(
        functools.partial(init_params, config, model), jax.random.PRNGKey(0)
    )
    lora_spec = adaptation.spec(config)
    if lora_spec is None:
        tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps, abstract_params)
        state = jax.eval_shape(functools.partial(init_state, config, model, tx))
    else:  # A LoRA run's: the adapters train, the whole model stays frozen (no base read).
        adapters = jax.eval_shape(
            functools.partial(lora.adapters, params=abstract_params, spec=lora_spec),
            jax.random.PRNGKey(0),
        )
        tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps, adapters)
        trained = jax.eval_shape(lambda: TrainState.create(adapters, tx, jax.random.PRNGKey(0)))
        state = AdaptedState.adapting(trained, abstract_params, lora_spec)
    assert isinstance(state, TrainState)
    kwargs = dict(
        model=model, task=task, tx=tx, schedule=schedule, num_microbatches=config.num_microbatches
    )
    step_fn = backend.traced_with(forms, steps.train_step)
    if config.parallelism.mode == "mesh":  # The global step, sharded over all devices.
        mesh = parallel.create(config.parallelism).mesh
        if attention_kernel is not None:
            choice = parallel.attention_on(attention_kernel, mesh)
            step_fn = attention.traced_with(choice, step_fn)
        step = parallel.mesh_train_step(step_fn, mesh, state, **kwargs)
        state = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            state,
            sharding.tree_shardings(state, mesh),
        )
        rows_sharding = sharding.batch_sharding(mesh)
        batch = {
            k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rows_sharding)
            for k, s in batch_spec(config, rows * jax.device_count()).items()
        }
        return step, state, batch
    # pmap: the per-device program on one device (the same on every device).
    if attention_kernel is not None:
        step_fn = attention.traced_with(attention.Choice(attention_kernel), step_fn)
    step = parallel.pmap_train_step(step_fn, jax.local_devices()[:1], **kwargs)
    return step, _with_device_axis(state), _with_device_axis(batch_spec(config, rows))


def lower_train_step(
    config: ml_collections.ConfigDict, per_device_batch_size: int | None = None
) -> tuple[Any, int, int, Any]:
    """(the trainer's train step lowered on abstract arguments, the number of the model's
    parameters, the number of those trained (fewer in a LoRA run: its adapters; they are
    counted in), the model's hyper-parameters). Nothing of the model's size is allocated.
    pmap: the per-device program; mesh: the global program on config.parallelism's mesh (XLA
    reports per device).
    Traced with the forms of config.model.kernels on this machine's devices."""
    par = parallel.create(config.parallelism, config.model.kernels, config.model.attention)
    step, state, batch = train_step_args(
        config, per_device_batch_size, par.forms, par.attention.kernel
    )
    lowered = step.lower(state, batch)
    _, head_kwargs = _task_and_head(config)
    _, model_config = models.build(config, **head_kwargs)
    trained = sum(int(x.size) for x in jax.tree.leaves(state.params))
    frozen = sum(int(x.size) for x in jax.tree.leaves(getattr(state, "frozen", None)))
    return lowered, trained + frozen, trained, model_config


def _flops(compiled: Any) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # Older JAX: one dict per executable.
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def estimate(
    config: ml_collections.ConfigDict,
    per_device_batch_size: int | None = None,
    compiler_options: dict[str, Any] | None = None,
) -> Estimate:
    """Compiles the configured train step (without running it) and reads XLA's figures.

    `compiler_options` go to XLA (e.g. a lower optimisation level for faster compiles).
    """
    rows = per_device_batch_size or config.per_device_batch_size
    start = time.perf_counter()
    lowered, num_params, trained_params, model_config = lower_train_step(config, rows)
    compiled = lowered.compile(compiler_options)
    compile_seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    tokens = rows * config.seq_len
    return Estimate(
        per_device_batch_size=rows,
        num_params=num_params,
        argument_bytes=int(memory.argument_size_in_bytes),
        output_bytes=int(memory.output_size_in_bytes),
        temp_bytes=int(memory.temp_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes),
        generated_code_bytes=int(memory.generated_code_size_in_bytes),
        flops_per_step=_flops(compiled) * config.num_microbatches,
        model_flops_per_step=accounting.model_flops_per_token(config, model_config) * tokens,
        tokens_per_step=tokens,
        compile_seconds=compile_seconds,
        trained_params=trained_params,
    )


def largest_batch(
    config: ml_collections.ConfigDict, memory_bytes: float, max_batch: int = 1 << 16
) -> tuple[int, dict[int, Estimate]]:
    """The largest per-device batch (a multiple of num_microbatches) whose step fits in
    `memory_bytes` per device, found by doubling then bisecting; 0 if none fits. Also returns
    every estimate compiled on the way, by batch size."""
    unit = config.num_microbatches
    seen: dict[int, Estimate] = {}

    def fits(multiple: int) -> bool:
        rows = multiple * unit
        seen[rows] = estimate(config, rows)
        return seen[rows].peak_bytes <= memory_bytes

    if not fits(1):
        return 0, seen
    low, high = 1, 2  # fits(low); high is the first multiple not yet known to fit.
    while high * unit <= max_batch and fits(high):
        low, high = high, high * 2
    if high * unit > max_batch:
        return low * unit, seen
    while high - low > 1:  # fits(low) and not fits(high).
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low * unit, seen


def format_bytes(n: float) -> str:
    return f"{n / GIB:.3f} GiB" if n >= GIB / 10 else f"{n / 2**20:.1f} MiB"
