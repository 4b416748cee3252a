"""The two parameter layouts of a block stack (config key model.scan_layers) and the one
conversion between them.

Unscanned, each layer has its own subtree: `h_0 .. h_{n-1}` (GPT), `layer_0 .. layer_{n-1}`
(BERT's encoder, T5's encoder and decoder). Scanned (`layers.scan_stack`), the stack is one
subtree `h` / `layer` whose arrays carry a leading [n] axis. `stack_layers` and
`unstack_layers` convert any pytree whose dicts mirror the parameters: the parameters, the
optimizer's moments, a whole TrainState, or its abstract shapes (`jax.ShapeDtypeStruct`s), so a
checkpoint of either layout restores into a model of either (ptjax.train.checkpoint). The
conversion is exact: unstack(stack(tree)) == tree.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Names of the scanned stacks; unscanned, their layers are f"{name}_{i}".
STACKS = ("h", "layer")
SCANNED, UNSCANNED = "scanned", "unscanned"
_LAYER_KEY = re.compile(rf"^({'|'.join(STACKS)})_\d+$")


def _on_dicts(fn: Callable[[Mapping], dict], tree: Any) -> Any:
    """`fn` applied to every outermost dict of `tree` (a TrainState's params, mu, nu, ...)."""
    is_dict = lambda x: isinstance(x, Mapping)  # noqa: E731
    return jax.tree.map(lambda x: fn(x) if is_dict(x) else x, tree, is_leaf=is_dict)


def _stack(*xs: Any) -> Any:
    """One layer's arrays (or shapes) -> stacked on a new leading axis."""
    first = xs[0]
    if isinstance(first, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((len(xs), *first.shape), first.dtype)
    if isinstance(first, jax.Array):
        return jnp.stack(xs)
    return np.stack(xs)


def _index(x: Any, i: int) -> Any:
    """Layer `i` of a stacked array (or shape)."""
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
    return x[i]


def _stack_dict(node: Mapping) -> dict:
    out = {k: _stack_dict(v) if isinstance(v, Mapping) else v for k, v in node.items()}
    for name in STACKS:
        n = 0
        while f"{name}_{n}" in out:
            n += 1
        if n == 0:
            continue
        if name in out:
            raise ValueError(f"A tree holds both {name!r} and {name}_0..: a mixed layout.")
        per_layer = [out.pop(f"{name}_{i}") for i in range(n)]
        out[name] = jax.tree.map(_stack, *per_layer)
    return out


def _unstack_dict(node: Mapping) -> dict:
    out = {k: _unstack_dict(v) if isinstance(v, Mapping) else v for k, v in node.items()}
    for name in STACKS:
        if not isinstance(out.get(name), Mapping):
            continue
        stacked = out.pop(name)
        lengths = {np.shape(x)[0] for x in jax.tree.leaves(stacked)}
        if len(lengths) != 1:
            raise ValueError(
                f"Stacked layers {name!r} have arrays of different leading sizes {lengths}."
            )
        for i in range(lengths.pop()):
            out[f"{name}_{i}"] = jax.tree.map(lambda x, i=i: _index(x, i), stacked)
    return out


def stack_layers(tree: Any) -> Any:
    """The scanned layout of `tree`: each run of per-layer subtrees NAME_0..NAME_{n-1} (NAME in
    STACKS) becomes one subtree NAME with the layers' arrays stacked on a new leading axis.
    Already scanned trees are returned as they are."""
    return _on_dicts(_stack_dict, tree)


def unstack_layers(tree: Any) -> Any:
    """The unscanned layout of `tree`: each stacked subtree NAME (NAME in STACKS) becomes
    NAME_0..NAME_{n-1}. Unscanned trees are returned as they are (also inside jit)."""
    return _on_dicts(_unstack_dict, tree)


def layout(tree: Any) -> str | None:
    """SCANNED or UNSCANNED by the names in `tree`'s dicts (params, a TrainState, Orbax
    metadata); None if it holds no block stack."""
    found: list[str] = []

    def visit(node: Mapping) -> dict:
        for key, value in node.items():
            if key in STACKS and isinstance(value, Mapping):
                found.append(SCANNED)
            elif _LAYER_KEY.match(str(key)):
                found.append(UNSCANNED)
            if isinstance(value, Mapping):
                visit(value)
        return {}

    _on_dicts(visit, tree)
    return found[0] if found else None


def to_layout(tree: Any, target: str | None) -> Any:
    """`tree` in layout `target` (SCANNED, UNSCANNED; None: unchanged)."""
    if target == SCANNED:
        return stack_layers(tree)
    if target == UNSCANNED:
        return unstack_layers(tree)
    return tree


def unscanned(model: nn.Module) -> nn.Module:
    """`model` with scan_layers=False (the same function on unstacked parameters): the layout
    that decodes with a per-layer cache."""
    if not model.config.scan_layers:
        return model
    return model.clone(config=dataclasses.replace(model.config, scan_layers=False))
