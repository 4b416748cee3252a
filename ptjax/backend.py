"""Which forms a step is traced with: the CPU-tuned ones, or plain XLA for GPU and TPU.

ptjax has a few forms written for XLA:CPU on a small machine (ptjax.models.mixed_matmul's bf16
products and bias gradient, ptjax.argmax's chunked maximum, the 16-bit Threefry dropout mask
in ptjax.models.layers). They are used only where a step runs on CPU devices; on GPU and TPU a
step gets flax's and jax.random's plain forms, which those compilers fuse and shard as they
are meant to.

The choice is made once per run from the devices the step will run on (`resolve`, config key
`model.kernels`: 'auto' picks by platform, 'cpu' or 'xla' force one), and whoever traces a
step enters it (`forms` / `traced_with`: ptjax.train.parallel, ptjax.decoding.generator). Not
`jax.default_backend()` at trace time: that is the host's backend, not necessarily the step's
(an export for TPU from a CPU machine, a step on a CPU device beside a GPU). Code traced outside
such a scope (a notebook calling a model directly) falls back to the default backend.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax

CPU = "cpu"  # The forms tuned for XLA:CPU.
XLA = "xla"  # Plain forms: what GPU and TPU get.
SETTINGS = ("auto", CPU, XLA)  # Config key model.kernels.

_FORMS: contextvars.ContextVar[str | None] = contextvars.ContextVar("ptjax_forms", default=None)


def platform_of(devices: Sequence[Any]) -> str:
    """The one platform of `devices` ('cpu', 'gpu', 'tpu'); mixed platforms are refused."""
    platforms = {d.platform for d in devices}
    if len(platforms) != 1:
        raise ValueError(f"A step's devices must share one platform, not {sorted(platforms)}.")
    return platforms.pop()


def resolve(setting: str, devices: Sequence[Any]) -> str:
    """CPU or XLA for a step on `devices` under config model.kernels=`setting`."""
    return resolve_platform(setting, platform_of(devices))


def resolve_platform(setting: str, platform: str) -> str:
    """CPU or XLA for a step on `platform` ('cpu', 'gpu', 'cuda', 'tpu', ...) under
    model.kernels=`setting`: what an export for that platform is traced with."""
    if setting not in SETTINGS:
        raise ValueError(f"model.kernels={setting!r} is not one of {', '.join(SETTINGS)}.")
    if setting != "auto":
        return setting
    return CPU if platform == "cpu" else XLA


def describe(setting: str, devices: Sequence[Any]) -> str:
    """A log line: what `resolve` chose for `devices` and why."""
    chosen = resolve(setting, devices)
    platform = platform_of(devices)
    why = "model.kernels=" + setting + ("" if setting != "auto" else f" on {platform} devices")
    what = "the XLA:CPU-tuned forms" if chosen == CPU else "plain XLA forms"
    return f"Steps use {what} ({why})."


@contextlib.contextmanager
def forms(kind: str | None) -> Iterator[None]:
    """While a step is traced: its forms are `kind` (CPU or XLA; None leaves them as they are)."""
    if kind is None:
        yield
        return
    if kind not in (CPU, XLA):
        raise ValueError(f"Forms {kind!r} are not {CPU!r} or {XLA!r}.")
    token = _FORMS.set(kind)
    try:
        yield
    finally:
        _FORMS.reset(token)


def traced_with(kind: str | None, fn: Callable) -> Callable:
    """`fn` entering forms(`kind`) whenever it runs: wrap a function before jit/pmap traces it."""
    if kind is None:
        return fn

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with forms(kind):
            return fn(*args, **kwargs)

    return run


def cpu_forms() -> bool:
    """Whether the step being traced takes the CPU-tuned forms."""
    kind = _FORMS.get()
    if kind is None:  # Outside a ptjax step: the default backend is the best guess there is.
        return jax.default_backend() == "cpu"
    return kind == CPU
