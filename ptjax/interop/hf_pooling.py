"""sentence-transformers files of a Hugging Face embedding model: carried by an import into
WORKDIR/sentence_transformers (and back out by an export), and read for their pooling.

A sentence-transformers model directory holds, beside the transformer's config.json and
weights, `modules.json` (the modules in order: Transformer, Pooling, optionally Normalize),
the Pooling module's `1_Pooling/config.json` (which `pooling_mode_*` are on) and
`sentence_bert_config.json` (`max_seq_length`). ptjax's `TextEmbedder` computes the same.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

POOLINGS = ("cls", "max", "mean", "mean_sqrt_len")  # sentence-transformers' order.
ST_DIR = "sentence_transformers"  # Where an import keeps the sentence-transformers files.
MODULES = "modules.json"
SETTINGS = "sentence_bert_config.json"
_TOP_FILES = (MODULES, SETTINGS, "config_sentence_transformers.json")
_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"
_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found (named by {MODULES}).") from None
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _modules(directory: str) -> list[dict[str, Any]] | None:
    path = os.path.join(directory, MODULES)
    if not os.path.isfile(path):
        return None
    modules = _read_json(path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ValueError(f"{path} is not a list of modules.")
    return modules


def settings(directory: str) -> dict[str, Any]:
    """{'pooling': tuple of POOLINGS, 'normalize': bool, 'max_len': int (0: none given)} of the
    sentence-transformers files in `directory`; {} when it has none. A module or pooling that
    ptjax does not compute is a ValueError naming it."""
    modules = _modules(directory)
    if modules is None:
        return {}
    out: dict[str, Any] = {"pooling": (), "normalize": False, "max_len": 0}
    for module in modules:
        kind = module.get("type", "")
        if kind == _NORMALIZE:
            out["normalize"] = True
        elif kind == _POOLING:
            path = os.path.join(directory, module.get("path", ""), "config.json")
            config = _read_json(path)
            on = [k for k, v in config.items() if k.startswith("pooling_mode_") and v]
            unknown = [k for k in on if k not in _MODES]
            if unknown:
                raise ValueError(
                    f"{path}: {', '.join(unknown)} is not a pooling ptjax computes "
                    f"({', '.join(POOLINGS)}); choose one with pooling=..."
                )
            out["pooling"] = tuple(name for key, name in _MODES.items() if config.get(key))
        elif kind != _TRANSFORMER:
            raise ValueError(
                f"{os.path.join(directory, MODULES)}: module {kind!r} is not one ptjax computes "
                "(it has the Transformer, Pooling and Normalize modules)."
            )
    path = os.path.join(directory, SETTINGS)
    if os.path.isfile(path):
        out["max_len"] = int(_read_json(path).get("max_seq_length") or 0)
    return out


def copy_files(source: str, target: str) -> list[str]:
    """Copies the sentence-transformers files of `source` (the top-level ones and each module's
    directory) into `target`, created if needed; their names, or [] when `source` has none."""
    modules = _modules(source)
    if modules is None:
        return []
    os.makedirs(target, exist_ok=True)
    copied = []
    for name in _TOP_FILES:
        if os.path.isfile(os.path.join(source, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(target, name))
            copied.append(name)
    for module in modules:
        sub = module.get("path", "")
        if sub and os.path.isdir(os.path.join(source, sub)):
            shutil.copytree(os.path.join(source, sub), os.path.join(target, sub))
            copied.append(sub + "/")
    return copied
