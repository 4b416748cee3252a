"""How a block of steps is measured: wall and CPU seconds, page faults and the share of the
machine other processes took meanwhile; peak device memory; the median the summary reports."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable


def _usage() -> tuple[float, float, int]:
    """(wall seconds, process CPU seconds, minor page faults so far)."""
    import resource

    times = os.times()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    return time.perf_counter(), times.user + times.system, faults


def _machine_busy() -> float:
    """CPU seconds all processes have used since boot (Linux /proc/stat; NaN elsewhere)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    busy = ticks[0] + ticks[1] + ticks[2] + sum(ticks[5:8])  # user nice system irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def time_block(
    step: Callable[[int], None],
    finish: Callable[[], None],
    steps: int,
    first: int,
    per_call: int = 1,
) -> dict[str, float]:
    """Runs `steps` steps (`per_call` steps per call of `step`) and `finish()`; returns per-step
    wall, CPU seconds and page faults.

    `other_cpu_fraction` is the share of the CPUs that other processes used meanwhile: on a
    shared machine, blocks where it is large are slower for reasons of their own.
    """
    wall0, cpu0, faults0 = _usage()
    busy0 = _machine_busy()
    for i in range(0, steps, per_call):
        step(first + i)
    finish()
    wall1, cpu1, faults1 = _usage()
    others = (_machine_busy() - busy0 - (cpu1 - cpu0)) / ((wall1 - wall0) * os.cpu_count())
    return {
        "step_seconds": (wall1 - wall0) / steps,
        "cpu_seconds_per_step": (cpu1 - cpu0) / steps,
        "page_faults_per_step": (faults1 - faults0) / steps,
        "other_cpu_fraction": max(others, 0.0),
    }


def peak_device_mib(side_name: str) -> float | None:
    """ptjax's peak accelerator memory (the first device's allocator); None on a CPU."""
    if side_name != "ptjax":
        return None
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None or jax.default_backend() == "cpu" else peak / 2**20


def median(values: list[float]) -> float:
    """The median as a plain float (for the JSON line), of blocks or of per-round ratios."""
    return float(statistics.median(values))
