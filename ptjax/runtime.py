"""Process set-up before JAX or TensorFlow start: env tuning, logs, TF device hiding, multi-host."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping

# Set to 1 to run ptjax's entry points in the environment exactly as given (see tune_process).
NO_TUNING_VAR = "PTJAX_NO_ENV_TUNING"
_REEXECUTED_VAR = "PTJAX_ENV_TUNED"  # Set on the re-executed process: never re-execute twice.

# glibc malloc, for the XLA:CPU runtime. Each step allocates its temporaries as one block (about
# 1 GB for the 'bench' GPT at 8 x 256 tokens) on a runtime thread and frees it at the end; glibc
# maps a block that large afresh every time, so the kernel faults in and zeroes 4 KiB pages by
# the hundred thousand per step (a fifth of the step's time). hugetlb=1 backs such blocks with
# transparent huge pages where THP is in 'madvise' or 'always' mode: 500x fewer faults. (Keeping
# the block with mmap_max=0 does not work from a thread's arena, and MALLOC_ARENA_MAX=1 trebles
# the peak memory.) Older glibc ignores the tunable (it needs 2.35).
TUNED_GLIBC_TUNABLES = (("glibc.malloc.hugetlb", "1"),)
# XLA:CPU flags for training. jaxlib 0.10's YNNPACK dot kernels ran the GPT's train-step matmuls
# 2-4x slower than XLA's Eigen ones on a 2-core AMD EPYC and kept one core idle; an empty
# fusion-type list turns YNNPACK off. Decoding is the other way round (one token's small
# matmuls per step): with YNNPACK on, T5 greedy decoding ran 1.6x and GPT's 1.08x faster, so
# workload='decode' (scripts/generate.py) keeps it. So does 'train_bf16' (model.dtype=bfloat16):
# its products take bf16 operands and accumulate in float32 (ptjax.models.mixed_matmul), which
# YNNPACK runs at twice float32's rate on AVX512-BF16 and XLA's own kernels do not.
TUNED_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)
WORKLOADS = ("train", "train_bf16", "decode")

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


def process_environment(
    tuned: bool, env: Mapping[str, str] | None = None, workload: str = "train"
) -> dict[str, str]:
    """`env` (default os.environ) with ptjax's CPU tuning for `workload` ('train': glibc and
    XLA flags; 'train_bf16' and 'decode': glibc only) added (tuned) or removed (not tuned).

    The user's own settings win: a glibc tunable or an XLA flag that `env` already sets is kept
    as it is in both cases; only the values ptjax adds are added or removed.
    """
    if workload not in WORKLOADS:
        raise ValueError(f"workload={workload!r} is not one of {WORKLOADS}.")
    env = dict(os.environ if env is None else env)
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
    flags = env.get("XLA_FLAGS", "").split()
    ours = {f"{name}={value}" for name, value in TUNED_GLIBC_TUNABLES}
    tunables = [t for t in tunables if t not in ours]
    flags = [f for f in flags if f not in TUNED_XLA_FLAGS]
    if tuned:
        names = {t.partition("=")[0] for t in tunables}
        tunables += [f"{n}={v}" for n, v in TUNED_GLIBC_TUNABLES if n not in names]
        given = {f.partition("=")[0] for f in flags}
        if workload == "train":
            flags += [f for f in TUNED_XLA_FLAGS if f.partition("=")[0] not in given]
    for key, items, sep in (("GLIBC_TUNABLES", tunables, ":"), ("XLA_FLAGS", flags, " ")):
        if items:
            env[key] = sep.join(items)
        else:
            env.pop(key, None)
    return env


def workload_for(what: str, dtype: str = "float32") -> str:
    """The WORKLOADS entry of a run: `what` 'train' or 'generate', `dtype` its model.dtype."""
    if what == "generate":
        return "decode"
    return "train_bf16" if str(dtype) == "bfloat16" else "train"


def run_workload(workdir: str) -> str:
    """workload_for('train', ...) of the run in `workdir`, from its config.json's model.dtype
    (for entry points that reopen a run, such as scripts/evaluate.py); 'train' where that file
    cannot be read, which the entry point then reports itself."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            dtype = json.load(f).get("model", {}).get("dtype", "float32")
    except (OSError, ValueError, AttributeError):
        return "train"
    return workload_for("train", dtype)


def tune_process(workload: str = "train") -> None:
    """Re-executes this script in process_environment(tuned=True) unless it already runs in it.

    glibc reads GLIBC_TUNABLES only when a process starts, so an entry point that wants them
    starts itself again (same interpreter, arguments and pid) before JAX is imported. Nothing
    happens with PTJAX_NO_ENV_TUNING=1, in an interactive session, or after one re-execution.
    """
    if os.environ.get(NO_TUNING_VAR) == "1" or os.environ.get(_REEXECUTED_VAR) == "1":
        return
    if hasattr(sys, "ps1") or sys.flags.interactive or "ipykernel" in sys.modules:
        return
    env = process_environment(tuned=True, workload=workload)
    if all(os.environ.get(k) == env.get(k) for k in ("GLIBC_TUNABLES", "XLA_FLAGS")):
        return
    env[_REEXECUTED_VAR] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def initialize(workload: str = "train") -> None:
    """Tunes the process (tune_process), hides accelerators from TensorFlow (tf.data only) and
    joins a multi-host run if asked. `workload`: 'train', or 'decode' for entry points that
    mostly generate (process_environment).

    On TPU VMs and SLURM/Kubernetes GPU clusters, jax.distributed.initialize() finds its peers
    from the environment; PTJAX_COORDINATOR=host:port with PTJAX_NUM_PROCESSES and
    PTJAX_PROCESS_ID set them explicitly.
    """
    tune_process(workload)
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
