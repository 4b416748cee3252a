"""The one place ptjax imports TensorFlow, so that TF stays on the CPU and leaves the accelerator
to JAX."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
import types
from collections.abc import Iterator

from absl import logging


@functools.cache
def import_tf() -> types.ModuleType:
    """The `tensorflow` module, with GPUs and TPUs hidden from it and its C++ logs quieted."""
    # Must happen before TF's first import to take effect; a value the user set is kept.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _import_triton_first()
    with _without_keras_eager_load():
        import tensorflow as tf

    for device_type in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], device_type)
        except (RuntimeError, ValueError) as e:
            # RuntimeError: TF already initialised its devices (someone used TF before us).
            logging.warning("Could not hide %s devices from TensorFlow: %s", device_type, e)
    return tf


# TensorFlow's __init__ imports this Keras module eagerly (for SavedModel optimizer registration)
# and skips it on ImportError; ptjax uses TensorFlow for tf.data only.
_KERAS_EAGER_IMPORT = "keras.src.optimizers"


@contextlib.contextmanager
def _without_keras_eager_load() -> Iterator[None]:
    """Lets TensorFlow's first import skip loading Keras: 3.4 s instead of 7.2 s (measured
    2026-12-03 with tensorflow-cpu 2.21 and keras 3 on the 2-core test VM), in every process
    that reads data. `tf.keras` stays a lazy module that loads Keras when first used."""
    blocked = "tensorflow" not in sys.modules and _KERAS_EAGER_IMPORT not in sys.modules
    if blocked:
        sys.modules[_KERAS_EAGER_IMPORT] = None  # `import` of a None entry raises ImportError.
    try:
        yield
    finally:
        if blocked and sys.modules.get(_KERAS_EAGER_IMPORT, "") is None:
            del sys.modules[_KERAS_EAGER_IMPORT]


# What tensorboard.plugins.hparams.api imports only to subclass a Keras callback (so loading
# Keras) when clu's TensorBoard writer imports it.
_TENSORBOARD_KERAS = "tensorboard.plugins.hparams._keras"


def import_metric_writers() -> types.ModuleType:
    """`clu.metric_writers`, imported without Keras: TensorBoard's hparams API (which clu's
    writer imports) defines a Keras callback at import time, loading Keras for 1.4 s in every
    process that writes events (2026-12-04, 2-core VM); ptjax writes hyper-parameters through
    that API and never uses the callback. In its place is one that says why it is missing."""
    import_tf()
    with _without_tensorboard_keras():
        from clu import metric_writers
    return metric_writers


@contextlib.contextmanager
def _without_tensorboard_keras() -> Iterator[None]:
    """A stand-in for TensorBoard's Keras callback module while clu is first imported; a later
    import of that module gets the real one."""
    blocked = _TENSORBOARD_KERAS not in sys.modules and "clu.metric_writers" not in sys.modules
    if blocked:
        stub = types.ModuleType(_TENSORBOARD_KERAS)
        stub.Callback = _KerasCallbackUnavailable
        sys.modules[_TENSORBOARD_KERAS] = stub
    try:
        yield
    finally:
        if blocked:
            del sys.modules[_TENSORBOARD_KERAS]


class _KerasCallbackUnavailable:
    """tensorboard.plugins.hparams.api.KerasCallback in a ptjax process (see
    import_metric_writers)."""

    def __init__(self, *args, **kwargs):
        raise ImportError(
            "tensorboard.plugins.hparams.api.KerasCallback is not loaded in ptjax processes "
            "(it would load Keras at start-up); import tensorboard.plugins.hparams._keras "
            "for it."
        )


def _import_triton_first() -> None:
    """Imports Triton (shipped with CUDA builds of PyTorch) before TensorFlow, when it is installed.

    With TensorFlow 2.21 loaded first, Triton's first import crashes the process (SIGSEGV in
    `triton/knobs.py`), so a test or notebook that later builds a Hugging Face reference model dies;
    the other order works. Measured with torch 2.14.1 (CUDA build) + tensorflow-cpu 2.21.
    """
    if "tensorflow" not in sys.modules and importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401
