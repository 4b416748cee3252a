"""The one place ptjax imports TensorFlow, so that TF stays on the CPU and leaves the accelerator
to JAX."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import types

from absl import logging


@functools.cache
def import_tf() -> types.ModuleType:
    """The `tensorflow` module, with GPUs and TPUs hidden from it and its C++ logs quieted."""
    # Must happen before TF's first import to take effect; a value the user set is kept.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _import_triton_first()
    import tensorflow as tf

    for device_type in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], device_type)
        except (RuntimeError, ValueError) as e:
            # RuntimeError: TF already initialised its devices (someone used TF before us).
            logging.warning("Could not hide %s devices from TensorFlow: %s", device_type, e)
    return tf


def _import_triton_first() -> None:
    """Imports Triton (shipped with CUDA builds of PyTorch) before TensorFlow, when it is installed.

    With TensorFlow 2.21 loaded first, Triton's first import crashes the process (SIGSEGV in
    `triton/knobs.py`), so a test or notebook that later builds a Hugging Face reference model dies;
    the other order works. Measured with torch 2.14.1 (CUDA build) + tensorflow-cpu 2.21.
    """
    if "tensorflow" not in sys.modules and importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401
