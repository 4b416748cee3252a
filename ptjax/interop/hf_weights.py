"""Reading and writing Hugging Face model directories: config.json plus weights.

Weights are `model.safetensors` (read with `safetensors.numpy`, no torch needed) or
`pytorch_model.bin` (needs torch; read only with `torch.load(weights_only=True)`, which never
runs code from the file), either possibly sharded with an index file (`*.index.json`: tensor
name -> shard file). Arrays come back in their stored dtype (bfloat16 as ml_dtypes' numpy type);
the family mappings convert to float32.
"""

from __future__ import annotations

import json
import os
import pickle
from typing import Any

import ml_dtypes  # noqa: F401  Registers bfloat16 with numpy, which safetensors.numpy needs.
import numpy as np

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
TORCH_BIN = "pytorch_model.bin"
INDEX_SUFFIX = ".index.json"


def read_config(hf_dir: str) -> dict[str, Any]:
    """The model's config.json as a dict."""
    path = os.path.join(hf_dir, CONFIG)
    if not os.path.isdir(hf_dir):
        raise FileNotFoundError(f"Hugging Face model directory {hf_dir!r} does not exist.")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: {hf_dir!r} is not a Hugging Face model directory (it needs "
            "config.json and model.safetensors or pytorch_model.bin)."
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _shards(hf_dir: str, weights: str) -> list[str] | None:
    """The weight files of `weights` (single or sharded), or None when neither exists."""
    single = os.path.join(hf_dir, weights)
    if os.path.exists(single):
        return [single]
    index = single + INDEX_SUFFIX
    if not os.path.exists(index):
        return None
    with open(index, encoding="utf-8") as f:
        weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index} has no 'weight_map' (tensor name -> shard file).")
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not os.path.exists(os.path.join(hf_dir, f))]
    if missing:
        raise FileNotFoundError(f"{index} names shard files that are not in {hf_dir}: {missing}")
    return [os.path.join(hf_dir, f) for f in files]


def _load_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"{path} is a PyTorch pickle, which needs torch to read (pip install torch, the CPU "
            "build is enough); or convert the directory to model.safetensors."
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if "unsupported" in line.lower()]
        detail = lines[0].rstrip(".") if lines else e
        raise ValueError(
            f"{path} holds Python objects besides tensors ({detail}). "
            "ptjax reads PyTorch pickles only with torch.load(weights_only=True), which never runs "
            "code from the file; convert the checkpoint to model.safetensors with a tool you trust."
        ) from None
    if not isinstance(state, dict):
        problem = f"it holds a {type(state).__name__}"
    else:
        others = [k for k, v in state.items() if not torch.is_tensor(v)]
        problem = f"its entries {others[:3]} are not tensors" if others else ""
    if problem:
        raise ValueError(
            f"{path} is not a state dict (tensor name -> tensor): {problem}; save the model's "
            "state_dict() (save_pretrained does)."
        )
    out = {}
    for name, tensor in state.items():
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: widen exactly.
            tensor = tensor.float()
        out[name] = tensor.numpy()
    return out


def read_state_dict(hf_dir: str) -> dict[str, np.ndarray]:
    """Every tensor of the model's weight files (safetensors preferred), by name."""
    files = _shards(hf_dir, SAFETENSORS)
    if files is not None:
        from safetensors.numpy import load_file

        loader = load_file
    else:
        files = _shards(hf_dir, TORCH_BIN)
        loader = _load_torch
    if files is None:
        raise FileNotFoundError(
            f"{hf_dir!r} holds no weights: expected {SAFETENSORS}, {TORCH_BIN} or a sharded "
            f"one with {SAFETENSORS}{INDEX_SUFFIX} / {TORCH_BIN}{INDEX_SUFFIX}."
        )
    state: dict[str, np.ndarray] = {}
    for path in files:
        for name, value in loader(path).items():
            if name in state:
                raise ValueError(f"Tensor {name!r} appears in more than one shard ({path}).")
            state[name] = value
    return state


def write_model(out_dir: str, config: dict[str, Any], state_dict: dict[str, np.ndarray]) -> None:
    """config.json and model.safetensors (one file, PyTorch-format metadata) into `out_dir`."""
    from safetensors.numpy import save_file

    with open(os.path.join(out_dir, CONFIG), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    tensors = {k: np.ascontiguousarray(v) for k, v in sorted(state_dict.items())}
    save_file(tensors, os.path.join(out_dir, SAFETENSORS), metadata={"format": "pt"})
