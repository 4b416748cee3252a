"""Process set-up before JAX or TensorFlow start: multi-host init and TF device hiding."""

from __future__ import annotations

import os


def initialize() -> None:
    """Hides accelerators from TensorFlow (tf.data only) and joins a multi-host run if asked.

    On TPU VMs and SLURM/Kubernetes GPU clusters, jax.distributed.initialize() finds its peers
    from the environment; PTJAX_COORDINATOR=host:port with PTJAX_NUM_PROCESSES and
    PTJAX_PROCESS_ID set them explicitly.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ptjax.data import tf_setup

    tf_setup.import_tf()
    import jax

    if os.environ.get("PTJAX_COORDINATOR"):
        jax.distributed.initialize(
            coordinator_address=os.environ["PTJAX_COORDINATOR"],
            num_processes=int(os.environ["PTJAX_NUM_PROCESSES"]),
            process_id=int(os.environ["PTJAX_PROCESS_ID"]),
        )
