"""Name-by-name tensor mappings between Hugging Face state dicts and ptjax parameter trees.

A family's `Mapping` is a list of `Rule`s (one HF tensor <-> one or more ptjax arrays, with the
transform each way), `Tie`s (an HF name holding a copy of another HF tensor: checked on import,
written on export only when asked) and patterns of HF tensors ptjax drops knowingly (buffers such
as GPT-2's causal masks, BERT's next-sentence head). `to_ptjax` and `to_hf` apply a mapping in
either direction and account for every tensor: a missing, unexpected or mis-shaped one is a
`ConversionError` naming it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from collections.abc import Mapping as MappingType
from typing import Any

import numpy as np
from flax import traverse_util

Path = tuple[str, ...]


class ConversionError(ValueError):
    """A checkpoint that does not convert; the message names each tensor at fault."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """One HF tensor of `shape` <-> the ptjax arrays at `paths` (`split` / `join` between them).

    Rules of a `group` other than "" belong to a part that a checkpoint may lack as a whole
    (a head, BERT's pooler), when the mapping lists the group as optional.
    """

    hf: str
    shape: tuple[int, ...]
    paths: tuple[Path, ...]
    split: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    join: Callable[..., np.ndarray]
    group: str = ""


def same(hf: str, shape: tuple[int, ...], path: Path, group: str = "") -> Rule:
    """The same array on both sides (embeddings, norms, biases)."""
    return Rule(hf, tuple(shape), (path,), lambda x: (x,), lambda x: x, group)


def reshaped(hf: str, shape: tuple[int, ...], path: Path, to: tuple[int, ...], group: str = ""):
    """A reshape of the same values (e.g. a bias [d] <-> [heads, head_dim])."""
    shape = tuple(shape)
    return Rule(hf, shape, (path,), lambda x: (x.reshape(to),), lambda x: x.reshape(shape), group)


def transposed(
    hf: str, shape: tuple[int, ...], path: Path, to: tuple[int, ...] | None = None, group: str = ""
) -> Rule:
    """torch.nn.Linear's weight [out, in] <-> a kernel [in, out], optionally reshaped to `to`
    (e.g. [d_model, heads, head_dim] for attention projections)."""
    shape = tuple(shape)
    to = to or shape[::-1]
    return Rule(
        hf,
        shape,
        (path,),
        lambda x: (np.ascontiguousarray(x.T).reshape(to),),
        lambda x: np.ascontiguousarray(x.reshape(shape[::-1]).T),
        group,
    )


@dataclasses.dataclass(frozen=True)
class Tie:
    """HF tensor `hf` is a copy of HF tensor `source` (tied weights saved under two names).

    On import it must equal the source exactly when present (or stands in for a source the file
    left out); on export it is written only with `write=True`.
    """

    hf: str
    source: str
    write: bool = False


@dataclasses.dataclass(frozen=True)
class Mapping:
    rules: tuple[Rule, ...]
    ties: tuple[Tie, ...] = ()
    ignored: tuple[str, ...] = ()  # Regular expressions (full match) of HF names dropped.
    optional_groups: frozenset[str] = frozenset()
    what: str = "the model config"  # Names the config in messages ("BertConfig(...)").


@dataclasses.dataclass
class Report:
    """What an import did besides the rules: names dropped, tie copies checked, groups absent."""

    ignored: list[str] = dataclasses.field(default_factory=list)
    ties: list[str] = dataclasses.field(default_factory=list)
    absent_groups: list[str] = dataclasses.field(default_factory=list)


def _listing(names: list[str], limit: int = 8) -> str:
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def to_ptjax(mapping: Mapping, state_dict: MappingType[str, Any]) -> tuple[dict[str, Any], Report]:
    """ptjax params (float32 numpy, nested dicts) from an HF state dict (name -> array)."""
    sd = {name: np.asarray(value) for name, value in state_dict.items()}
    report = Report()
    used: set[str] = set()
    for name in sd:
        if any(re.fullmatch(pattern, name) for pattern in mapping.ignored):
            report.ignored.append(name)
            used.add(name)
    problems: list[str] = []
    for tie in mapping.ties:
        if tie.hf not in sd:
            continue
        used.add(tie.hf)
        if tie.source not in sd:  # The file kept only the other name of the tied pair.
            sd[tie.source] = sd[tie.hf]
            report.ties.append(f"{tie.hf} (stands in for {tie.source})")
        elif sd[tie.hf].shape != sd[tie.source].shape or not np.array_equal(
            sd[tie.hf], sd[tie.source]
        ):
            problems.append(
                f"{tie.hf}: must be a copy of {tie.source} (ptjax ties them), but it differs"
            )
        else:
            report.ties.append(f"{tie.hf} (= {tie.source})")
    groups: dict[str, list[Rule]] = {}
    for rule in mapping.rules:
        groups.setdefault(rule.group, []).append(rule)
    missing, misshaped, flat = [], [], {}
    for group, rules in groups.items():
        if group in mapping.optional_groups and not any(r.hf in sd for r in rules):
            report.absent_groups.append(group)
            continue
        for rule in rules:
            if rule.hf not in sd:
                missing.append(f"{rule.hf} {rule.shape}")
                continue
            used.add(rule.hf)
            value = sd[rule.hf]
            if value.shape != rule.shape:
                misshaped.append(f"{rule.hf} has shape {value.shape}, expected {rule.shape}")
                continue
            arrays = rule.split(value.astype(np.float32))
            for path, array in zip(rule.paths, arrays, strict=True):
                flat[path] = array
    unexpected = sorted(set(sd) - used)
    if missing:
        problems.append(f"missing: {_listing(missing)}")
    if misshaped:
        problems.append(f"mis-shaped ({mapping.what}): {_listing(misshaped)}")
    if unexpected:
        problems.append(f"unexpected (not in {mapping.what}): {_listing(unexpected)}")
    if problems:
        raise ConversionError("Hugging Face checkpoint does not convert: " + "; ".join(problems))
    return traverse_util.unflatten_dict(flat), report


def to_hf(mapping: Mapping, params: Any) -> dict[str, np.ndarray]:
    """An HF state dict (name -> float32 numpy) from ptjax params; every param must be used."""
    flat = {k: np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(params).items()}
    out: dict[str, np.ndarray] = {}
    used: set[Path] = set()
    missing, misshaped = [], []
    groups: dict[str, list[Rule]] = {}
    for rule in mapping.rules:
        groups.setdefault(rule.group, []).append(rule)
    for group, rules in groups.items():
        present = [p for r in rules for p in r.paths if p in flat]
        if group in mapping.optional_groups and not present:
            continue
        for rule in rules:
            absent = [p for p in rule.paths if p not in flat]
            if absent:
                missing += ["/".join(p) for p in absent]
                continue
            used.update(rule.paths)
            value = rule.join(*(flat[p] for p in rule.paths))
            if value.shape != rule.shape:
                shapes = ", ".join(f"{'/'.join(p)} {flat[p].shape}" for p in rule.paths)
                misshaped.append(f"{shapes} -> {rule.hf} {value.shape}, expected {rule.shape}")
                continue
            out[rule.hf] = np.ascontiguousarray(value)
    for tie in mapping.ties:
        if tie.write and tie.source in out:
            out[tie.hf] = out[tie.source].copy()
    unexpected = sorted("/".join(p) for p in set(flat) - used)
    problems = []
    if missing:
        problems.append(f"missing parameters: {_listing(missing)}")
    if misshaped:
        problems.append(f"mis-shaped ({mapping.what}): {_listing(misshaped)}")
    if unexpected:
        problems.append(f"parameters with no Hugging Face name: {_listing(unexpected)}")
    if problems:
        raise ConversionError("ptjax parameters do not convert: " + "; ".join(problems))
    return out


def attention_rate(hf: MappingType[str, Any], key: str, hidden_key: str) -> float:
    """A family config's attention_dropout_rate from an HF config's `key`: -1 (the same as the
    hidden dropout) unless it differs from `hidden_key`'s."""
    hidden, rate = float(hf.get(hidden_key, 0.1)), float(hf.get(key, hf.get(hidden_key, 0.1)))
    return -1.0 if rate == hidden else rate
