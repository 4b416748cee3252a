"""Process set-up before JAX or TensorFlow start: logging, TF device hiding, multi-host init."""

from __future__ import annotations

import logging
import os

# Libraries whose INFO lines drown the training log; their warnings and errors still show.
_QUIET_LIBRARIES = (
    f"{os.sep}orbax{os.sep}",
    f"{os.sep}tensorflow_datasets{os.sep}",
    f"{os.sep}etils{os.sep}",
    f"{os.sep}jax{os.sep}_src{os.sep}",
)


class _QuietLibraries(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not any(
            part in record.pathname for part in _QUIET_LIBRARIES
        )


def quiet_library_logs() -> None:
    """Keeps library INFO chatter (Orbax, TFDS) out of the training log."""
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().addFilter(_QuietLibraries())
    logging.getLogger().addFilter(_QuietLibraries())


def initialize() -> None:
    """Hides accelerators from TensorFlow (tf.data only) and joins a multi-host run if asked.

    On TPU VMs and SLURM/Kubernetes GPU clusters, jax.distributed.initialize() finds its peers
    from the environment; PTJAX_COORDINATOR=host:port with PTJAX_NUM_PROCESSES and
    PTJAX_PROCESS_ID set them explicitly.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet_library_logs()
    from ptjax.data import tf_setup

    tf_setup.import_tf()
    import jax
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    if os.environ.get("PTJAX_COORDINATOR"):
        jax.distributed.initialize(
            coordinator_address=os.environ["PTJAX_COORDINATOR"],
            num_processes=int(os.environ["PTJAX_NUM_PROCESSES"]),
            process_id=int(os.environ["PTJAX_PROCESS_ID"]),
        )
