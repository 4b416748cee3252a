"""Low-rank adapters (LoRA, Hu et al. 2021) on the kernels of any family's parameter tree.

An adapted kernel W [*in, *out] reads W + (alpha / rank) * (A @ B) with A [in, rank] and
B [rank, out] (in, out: the products of the input and output axes): B starts at zero, so the
adapted model starts as the base model exactly. Which kernels: `targets`, names of the
projections (`query`, `key`, `value`, `out`, `wi`, `wi_0`, `wi_1`, `wo`, `lm_head`) matched
against each kernel's parent module, in every family's names (GPT's and Llama's `attn`, BERT's
and T5's attention, their MLPs). A scanned stack's kernels (leading layer axis) get one
adapter per layer.

`adapters` makes the adapter tree, `merge` the adapted parameters (what a forward pass or an
export takes), `trainable_count` the adapters' size. The projections into attention heads
contract one axis ([d_model] -> [heads, head_dim]); the attention output projections
contract two ([heads, head_dim] -> [d_model]).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from ptjax.models import scan

PROJECTIONS = ("query", "key", "value", "out", "wi", "wi_0", "wi_1", "wo", "lm_head")
_ATTENTION_OUT = re.compile(r"(^|/)(attn|attention|self_attention|cross_attention)/out$")


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    rank: int
    alpha: float
    targets: tuple[str, ...] = ("query", "value")

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"LoRA rank={self.rank} must be >= 1.")
        unknown = [t for t in self.targets if t not in PROJECTIONS]
        if unknown or not self.targets:
            raise ValueError(
                f"LoRA targets {list(self.targets)}: give names of {', '.join(PROJECTIONS)}."
            )

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _layout(path: tuple[str, ...], kernel: Any) -> tuple[int, int, int]:
    """(leading layer axes, input size, output size) of a kernel at `path`."""
    joined = "/".join(path[:-1])
    layers = 1 if re.search(rf"(^|/)({'|'.join(scan.STACKS)})(/|$)", joined) else 0
    shape = kernel.shape[layers:]
    num_in = 2 if _ATTENTION_OUT.search(joined) else 1
    return layers, math.prod(shape[:num_in]), math.prod(shape[num_in:])


def targeted(params: Any, spec: LoraSpec) -> list[tuple[str, ...]]:
    """Paths of the kernels `spec` adapts, in a stable order; none found is an error."""
    flat = traverse_util.flatten_dict(params)
    paths = sorted(p for p in flat if p[-1] == "kernel" and len(p) > 1 and p[-2] in spec.targets)
    if not paths:
        raise ValueError(f"No kernel of the parameters is a LoRA target of {list(spec.targets)}.")
    return paths


def adapters(rng: jax.Array, params: Any, spec: LoraSpec) -> dict[str, Any]:
    """{'/'.join(path): {'a': [L.., in, rank], 'b': [L.., rank, out] zeros}} for each target;
    A is Kaiming-uniform as in the reference implementation, B zero."""
    flat = traverse_util.flatten_dict(params)
    out = {}
    for i, path in enumerate(targeted(params, spec)):
        kernel = flat[path]
        layers, n_in, n_out = _layout(path, kernel)
        lead = kernel.shape[:layers]
        bound = 1.0 / math.sqrt(n_in)
        a = jax.random.uniform(
            jax.random.fold_in(rng, i), (*lead, n_in, spec.rank), jnp.float32, -bound, bound
        )
        out["/".join(path)] = {"a": a, "b": jnp.zeros((*lead, spec.rank, n_out), jnp.float32)}
    return out


def delta(kernel: Any, adapter: dict[str, Any], spec: LoraSpec) -> jax.Array:
    """(alpha / rank) * A @ B in `kernel`'s shape and dtype."""
    product = jnp.matmul(adapter["a"], adapter["b"]) * spec.scale  # [L.., in, out]
    return product.reshape(kernel.shape).astype(kernel.dtype)


def merge(params: Any, adapter_tree: dict[str, Any], spec: LoraSpec) -> Any:
    """The parameters with every adapted kernel replaced by W + (alpha / rank) * A @ B."""
    flat = dict(traverse_util.flatten_dict(params))
    for name, adapter in adapter_tree.items():
        path = tuple(name.split("/"))
        if path not in flat:
            raise ValueError(f"LoRA adapter {name!r} has no kernel in the parameters.")
        flat[path] = flat[path] + delta(flat[path], adapter, spec)
    return traverse_util.unflatten_dict(flat)


def trainable_count(adapter_tree: dict[str, Any]) -> int:
    return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(adapter_tree))


def parse_targets(text: str) -> tuple[str, ...]:
    """'query,value' -> ('query', 'value')."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


def spec_from(rank: int, alpha: float, targets: str | Sequence[str]) -> LoraSpec:
    names = parse_targets(targets) if isinstance(targets, str) else tuple(targets)
    return LoraSpec(rank=rank, alpha=alpha, targets=names)
