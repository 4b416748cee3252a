"""Low-rank adapters (LoRA, Hu et al. 2021) for the projections of every family.

An adapted projection computes x W + (alpha / rank) * dropout(x) A B, with A [in, rank] and
B [rank, out] (in, out: the products of its contracted and produced axes). The adapters live in
the parameter tree beside the kernel they adapt, as `lora_a` and `lora_b` of that `Dense`
(`add_adapters`); B starts at zero, so an adapted model starts as the base model exactly. In a
scanned block stack they carry its leading layer axis like every parameter there, one adapter
per layer.

Which projections: `targets`, the names of the modules (`query`, `key`, `value`, `out`, `wi`,
`wi_0`, `wi_1`, `wo`), in every family's attention and MLP blocks. A forward pass under
`applied` adds the low-rank product in each adapted projection without ever forming W + A B
(training: no full-size weight gradient, only activations' gradients through the frozen W);
`merge` folds the adapters into the kernels, giving a plain parameter tree for decoding,
evaluation and export.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from ptjax.models import layers, scan

PROJECTIONS = ("query", "key", "value", "out", "wi", "wi_0", "wi_1", "wo")
A, B = "lora_a", "lora_b"
_ATTENTION_OUT = re.compile(r"(^|/)(attn|attention|self_attention|cross_attention)/out$")
_STACK = re.compile(rf"(^|/)({'|'.join(scan.STACKS)})(/|$)")


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    rank: int
    alpha: float
    targets: tuple[str, ...] = ("query", "value")
    dropout: float = 0.0  # On the adapters' input, in training.

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"LoRA rank={self.rank} must be >= 1.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout={self.dropout} must lie in [0, 1).")
        unknown = [t for t in self.targets if t not in PROJECTIONS]
        if unknown or not self.targets:
            raise ValueError(
                f"LoRA targets {list(self.targets)}: give names of {', '.join(PROJECTIONS)}."
            )

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def is_adapter(path: Sequence[str]) -> bool:
    """Whether a parameter path ends in an adapter (`lora_a` / `lora_b`)."""
    return path[-1] in (A, B)


def _layout(path: tuple[str, ...], kernel: Any) -> tuple[int, int, int]:
    """(leading layer axes, input size, output size) of a kernel at `path`."""
    joined = "/".join(path[:-1])
    lead = 1 if _STACK.search(joined) else 0
    shape = kernel.shape[lead:]
    num_in = 2 if _ATTENTION_OUT.search(joined) else 1
    return lead, math.prod(shape[:num_in]), math.prod(shape[num_in:])


def targeted(params: Any, spec: LoraSpec) -> list[tuple[str, ...]]:
    """Paths of the kernels `spec` adapts, in a stable order; none found is an error."""
    flat = traverse_util.flatten_dict(params)
    paths = sorted(p for p in flat if p[-1] == "kernel" and len(p) > 1 and p[-2] in spec.targets)
    if not paths:
        raise ValueError(f"No kernel of the parameters is a LoRA target of {list(spec.targets)}.")
    return paths


def adapters(rng: jax.Array, params: Any, spec: LoraSpec) -> Any:
    """The adapters of `params` (arrays or shapes) as a tree of their own: `lora_a` [L.., in,
    rank] (Kaiming-uniform, as the reference implementation) and `lora_b` [L.., rank, out]
    (zeros) at the path of each targeted kernel's module."""
    flat = dict(traverse_util.flatten_dict(params))
    out = {}
    for i, path in enumerate(targeted(params, spec)):
        kernel = flat[path]
        lead, n_in, n_out = _layout(path, kernel)
        shape = kernel.shape[:lead]
        bound = 1.0 / math.sqrt(n_in)
        out[(*path[:-1], A)] = jax.random.uniform(
            jax.random.fold_in(rng, i), (*shape, n_in, spec.rank), jnp.float32, -bound, bound
        )
        out[(*path[:-1], B)] = jnp.zeros((*shape, spec.rank, n_out), jnp.float32)
    return traverse_util.unflatten_dict(out)


def add_adapters(rng: jax.Array, params: Any, spec: LoraSpec) -> Any:
    """`params` with `adapters` beside their kernels."""
    flat = dict(traverse_util.flatten_dict(params))
    flat.update(traverse_util.flatten_dict(adapters(rng, params, spec)))
    return traverse_util.unflatten_dict(flat)


def merged_kernels(params: Any, spec: LoraSpec) -> Any:
    """W + (alpha / rank) * A @ B in W's shape and dtype for every adapted kernel of `params` (a
    tree holding adapters), as a tree of those kernels alone."""
    flat = traverse_util.flatten_dict(params)
    out = {}
    for path, a in flat.items():
        if path[-1] != A:
            continue
        kernel_path = (*path[:-1], "kernel")
        if kernel_path not in flat:
            raise ValueError(f"LoRA adapter {'/'.join(path)} has no kernel beside it.")
        kernel = flat[kernel_path]
        product = jnp.matmul(a, flat[(*path[:-1], B)]) * spec.scale  # [L.., in, out]
        out[kernel_path] = kernel + product.reshape(kernel.shape).astype(kernel.dtype)
    return traverse_util.unflatten_dict(out)


def merge(params: Any, spec: LoraSpec, kernels: Any = None) -> Any:
    """A plain parameter tree: adapted kernels replaced by their merged values (`kernels`, as
    `merged_kernels` gives them, or computed here), adapters left out."""
    kernels = traverse_util.flatten_dict(
        merged_kernels(params, spec) if kernels is None else kernels
    )
    flat = traverse_util.flatten_dict(params)
    plain = {p: kernels.get(p, x) for p, x in flat.items() if not is_adapter(p)}
    return traverse_util.unflatten_dict(plain)


def adapter_count(params: Any) -> int:
    """How many adapter parameters a tree holds."""
    flat = traverse_util.flatten_dict(params)
    return sum(int(math.prod(x.shape)) for p, x in flat.items() if is_adapter(p))


@contextlib.contextmanager
def applied(spec: LoraSpec, train: bool) -> Iterator[None]:
    """While a model is applied: every `layers.Dense` whose parameters hold adapters adds
    (alpha / rank) * dropout(x) A B to its output (dropout from the 'dropout' RNG stream, in
    training only)."""

    def interceptor(next_fun: Any, args: tuple, kwargs: dict, context: Any) -> Any:
        module = context.module
        if (
            context.method_name != "__call__"
            or not isinstance(module, layers.Dense)
            or not module.has_variable("params", A)
        ):
            return next_fun(*args, **kwargs)
        y = next_fun(*args, **kwargs)
        a = jnp.asarray(module.get_variable("params", A), module.dtype)
        b = jnp.asarray(module.get_variable("params", B), module.dtype)
        x = jnp.asarray(args[0], module.dtype).reshape(-1, a.shape[-2])
        if train and spec.dropout > 0.0:
            keep, scale = layers.dropout_keep(module.make_rng("dropout"), spec.dropout, x.shape)
            x = jnp.where(keep, x * jnp.asarray(scale, x.dtype), jnp.zeros((), x.dtype))
        low_rank = jnp.dot(jnp.dot(x, a), b) * jnp.asarray(spec.scale, x.dtype)
        return y + low_rank.reshape(y.shape).astype(y.dtype)

    with nn.intercept_methods(interceptor):
        yield
