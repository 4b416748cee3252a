"""FLOP accounting and profiling: peak FLOP/s per device, model FLOPs utilisation, traces.

MFU = model FLOPs per step x steps per second / the devices' peak FLOP/s. Model FLOPs come from
the family's analytical `flops_per_token` (matmuls only, forward + backward = 3x forward, causal
attention counted once: see each model's docstring) times every position of every row of the
global batch (padding included: the chips compute it). The peak is the dense bf16 rate of the
chip from the table below (a float32 run on a GPU or TPU is measured against it too, so it shows
what bf16 would gain), or, on a CPU, a float32 matmul rate measured once per process.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ptjax import models, tasks

# Dense bf16 peak FLOP/s per device (one chip or GPU), from the vendors' data sheets. Matched
# as lower-case substrings of `jax.Device.device_kind`, first match wins (most specific first).
PEAK_FLOPS_PER_DEVICE: tuple[tuple[str, float], ...] = (
    ("tpu v6 lite", 918e12),  # v6e (Trillium).
    ("tpu v6e", 918e12),
    ("tpu v5 lite", 197e12),  # v5e.
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),  # v5p reports itself as "TPU v5".
    ("tpu v4", 275e12),
    ("h200", 989e12),  # SXM, without sparsity (as H100 SXM).
    ("h100 pcie", 756e12),
    ("h100", 989e12),  # SXM.
    ("a100", 312e12),
)


def table_peak_flops(device_kind: str) -> float | None:
    """The table's dense bf16 peak of a device kind (e.g. 'TPU v4', 'NVIDIA H100 80GB HBM3')."""
    kind = device_kind.lower()
    for pattern, flops in PEAK_FLOPS_PER_DEVICE:
        if pattern in kind:
            return flops
    return None


@functools.cache
def measured_cpu_flops(size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a float32 [size, size] matmul on the first CPU device (best of `repeats`): the
    host's attainable rate, which all of its (fake) CPU devices share."""
    device = jax.local_devices(backend="cpu")[0]
    x = jax.device_put(jnp.ones((size, size), jnp.float32), device)
    matmul = jax.jit(lambda a: a @ a)
    matmul(x).block_until_ready()  # Compile.
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def peak_flops(override_per_device: float = 0.0) -> float | None:
    """Peak FLOP/s of all devices of the run: per-device peak x device count on accelerators,
    the measured host rate x process count on CPUs; None for a device kind not in the table
    (set config.peak_flops_per_device)."""
    device = jax.devices()[0]
    if override_per_device > 0:
        return override_per_device * jax.device_count()
    if device.platform == "cpu":
        return measured_cpu_flops() * jax.process_count()
    per_device = table_peak_flops(device.device_kind)
    return None if per_device is None else per_device * jax.device_count()


def model_flops_per_token(config: ml_collections.ConfigDict, model_config: Any) -> float:
    """Analytical training FLOPs per position of the run's model and task (the vocabulary output
    on the task's share of positions: all for language models, the masked ones for MLM, none
    for a classifier or span head)."""
    family = models.MODELS[config.model.family]
    fraction = tasks.TASKS[config.task]().predicted_fraction(config)
    return family.flops_per_token(model_config, config.seq_len, fraction)


def model_flops_per_step(config: ml_collections.ConfigDict, model_config: Any) -> float:
    """Analytical training FLOPs of one global step (every position of every row)."""
    positions = config.per_device_batch_size * jax.device_count() * config.seq_len
    return model_flops_per_token(config, model_config) * positions


class Profiler:
    """Captures a `jax.profiler` trace of `num_steps` steps into `directory` (TensorBoard's
    profile plugin reads WORKDIR/profile), starting after `first_step` so that compilation is
    not in it."""

    def __init__(self, directory: str, first_step: int, num_steps: int):
        self.directory = directory
        self.first_step, self.last_step = first_step, first_step + num_steps
        self.active = False

    def before_step(self, step: int) -> None:
        """Call with the number of steps done before the next one."""
        if step == self.first_step and self.last_step > self.first_step:
            os.makedirs(self.directory, exist_ok=True)
            jax.profiler.start_trace(self.directory)
            self.active = True

    def after_step(self, done: int, outputs: Any) -> None:
        """Call with the number of steps done; waits for `outputs` before the trace ends."""
        if self.active and done >= self.last_step:
            self.stop(outputs)

    def stop(self, outputs: Any = None) -> None:
        if not self.active:
            return
        jax.block_until_ready(outputs)
        jax.profiler.stop_trace()
        self.active = False
        logging.info(
            "Profile of steps %d..%d written to %s",
            self.first_step + 1,
            self.last_step,
            self.directory,
        )
