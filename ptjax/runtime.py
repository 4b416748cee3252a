"""Process set-up before JAX or TensorFlow start: env tuning, logs, TF device hiding, multi-host."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import glob
import importlib.util
import json
import logging
import os
import re
import socket
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from absl import logging as absl_logging

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
    (for entry points that reopen a run, such as scripts/embed.py); 'train' where that file
    cannot be read, which the entry point then reports itself."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            dtype = json.load(f).get("model", {}).get("dtype", "float32")
    except (OSError, ValueError, AttributeError):
        return "train"
    return workload_for("train", dtype)


# Device files of accelerators JAX would run on: NVIDIA GPUs, TPU chips (v4: accel, v5e and
# later: vfio), AMD GPUs.
_ACCELERATOR_DEVICES = ("/dev/nvidia[0-9]*", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*", "/dev/kfd")


def accelerator_platform(env: Mapping[str, str], device_globs: Sequence[str] = ()) -> bool:
    """Whether this process's JAX will run on an accelerator, told before JAX is imported: by
    JAX_PLATFORMS where it is set (its first entry), else by the accelerators' device files."""
    platforms = env.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() != "cpu"
    return any(glob.glob(pattern) for pattern in device_globs or _ACCELERATOR_DEVICES)


def tune_process(workload: str = "train") -> None:
    """Re-executes this script in process_environment(tuned=True) unless it already runs in it,
    when the run's platform is the CPU (accelerator_platform says not).

    glibc reads GLIBC_TUNABLES only when a process starts, so an entry point that wants them
    starts itself again (same interpreter, arguments and pid) before JAX is imported. Nothing
    happens with PTJAX_NO_ENV_TUNING=1, in an interactive session, or after one re-execution.
    """
    if os.environ.get(NO_TUNING_VAR) == "1" or os.environ.get(_REEXECUTED_VAR) == "1":
        return
    if accelerator_platform(os.environ):  # glibc's and XLA:CPU's settings are for CPU runs.
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


@contextlib.contextmanager
def start_up() -> Iterator[None]:
    """A process's start (its imports of TensorFlow, JAX, Flax, Orbax: a few hundred thousand
    objects) with Python's cyclic garbage collector paused, then those objects frozen
    (`gc.freeze`): no collection runs while they are made, and the run's later full collections
    do not walk them again. Imports make almost no garbage cycles; pausing the collector took a
    quarter to a third off a trainer process's start (runtime.initialize() and
    `import ptjax.train.trainer`: 5.2 -> 3.3-4.6 CPU-s, means of 4-5 starts on the 2-core test
    VM, 2026-12-04). Entry points wrap runtime.initialize() and their imports in it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def initialize(workload: str = "train") -> None:
    """Tunes the process (tune_process), hides accelerators from TensorFlow (tf.data only) and
    joins a multi-host run when there is one (join_cluster). `workload`: 'train', or 'decode'
    for entry points that mostly generate (process_environment).
    """
    tune_process(workload)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet_library_logs()
    from ptjax.data import tf_setup

    tf_setup.import_tf()
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    import jax

    # Random bits of a sharded shape drawn shard by shard on each device (dropout on a mesh).
    jax.config.update("jax_threefry_partitionable", True)
    join_cluster()


# Multi-host start-up: explicit peers, or a cluster jax.distributed.initialize() discovers.
EXPLICIT_VARS = ("PTJAX_COORDINATOR", "PTJAX_NUM_PROCESSES", "PTJAX_PROCESS_ID")
DISCOVERY_VAR = "PTJAX_DISTRIBUTED"  # 0: never discover a cluster; 1: always ask JAX to.
TIMEOUT_VAR = "PTJAX_INIT_TIMEOUT"  # Seconds to wait for every process to join (default 300).
DEFAULT_TIMEOUT_S = 300
# What JAX's cluster detection (jax._src.clusters) needs from the environment.
_SLURM_VARS = (
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
)
_TPU_HOST_VARS = ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES")  # GKE; GCE has metadata.
# JAX 0.10 ends the process (LOG(FATAL)) when its own start-up deadline passes; it is set this
# much after ptjax's, so that ptjax's comes first and raises a Python error instead.
_JAX_DEADLINE_GRACE_S = 60


@dataclasses.dataclass(frozen=True)
class ClusterPlan:
    """How this process starts. `source`: 'single' (no jax.distributed), 'explicit'
    (PTJAX_COORDINATOR and co.), or what tells of a cluster for JAX to discover: 'slurm',
    'ompi', 'tpu', 'kubernetes', 'forced' (PTJAX_DISTRIBUTED=1). `evidence`: the variables
    that decided it; `warning`: a reason to doubt a single-process start."""

    source: str
    timeout_s: int = DEFAULT_TIMEOUT_S
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    evidence: str = ""
    warning: str = ""

    @property
    def distributed(self) -> bool:
        return self.source != "single"


def _int_var(env: Mapping[str, str], name: str, low: int) -> int:
    try:
        value = int(env[name])
    except ValueError:
        value = low - 1
    if value < low:
        raise ValueError(f"{name}={env[name]!r} must be an integer >= {low}.")
    return value


def cluster_plan(env: Mapping[str, str], tpu_vm: bool = False) -> ClusterPlan:
    """How this process joins its run, from the environment `env` alone (no JAX, no network).

    1. PTJAX_COORDINATOR=host:port, PTJAX_NUM_PROCESSES and PTJAX_PROCESS_ID: all three.
    2. PTJAX_DISTRIBUTED=0: no discovery, one process; =1: JAX must discover a cluster.
    3. Else a cluster JAX discovers by itself when it holds more than this process: Open MPI
       (OMPI_COMM_WORLD_SIZE > 1), SLURM tasks started by srun (SLURM_STEP_NUM_TASKS, else
       SLURM_NTASKS, > 1), a Cloud TPU VM (`tpu_vm`: JAX's running_in_cloud_tpu_vm; on GKE
       TPU_WORKER_HOSTNAMES or TPU_PROCESS_ADDRESSES list more than one host or
       MEGASCALE_NUM_SLICES > 1; on GCE the worker list is in the VM's metadata, which JAX
       reads: one process on a single-host VM), a Kubernetes Indexed Job
       (KUBERNETES_SERVICE_HOST and JOB_COMPLETION_INDEX; JAX asks the API for its size).
    4. Else one process: jax.distributed is not started.
    Malformed or incomplete variables raise ValueError naming them.
    """
    timeout_s = _int_var(env, TIMEOUT_VAR, 1) if env.get(TIMEOUT_VAR) else DEFAULT_TIMEOUT_S
    given = [name for name in EXPLICIT_VARS if env.get(name)]
    if given:
        missing = [name for name in EXPLICIT_VARS if not env.get(name)]
        if missing:
            raise ValueError(
                f"{', '.join(given)} set without {', '.join(missing)}: an explicit multi-host "
                f"start needs all of {', '.join(EXPLICIT_VARS)}."
            )
        coordinator = env["PTJAX_COORDINATOR"]
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"PTJAX_COORDINATOR={coordinator!r} must be host:port.")
        count = _int_var(env, "PTJAX_NUM_PROCESSES", 1)
        index = _int_var(env, "PTJAX_PROCESS_ID", 0)
        if index >= count:
            raise ValueError(
                f"PTJAX_PROCESS_ID={index} must lie in [0, PTJAX_NUM_PROCESSES={count})."
            )
        evidence = f"PTJAX_COORDINATOR={coordinator}"
        return ClusterPlan("explicit", timeout_s, coordinator, count, index, evidence)
    switch = env.get(DISCOVERY_VAR, "")
    if switch not in ("", "0", "1"):
        raise ValueError(f"{DISCOVERY_VAR}={switch!r} must be 0 (off), 1 (on) or unset (auto).")
    if switch == "0":
        return ClusterPlan("single", timeout_s, evidence=f"{DISCOVERY_VAR}=0")
    if switch == "1":
        return ClusterPlan("forced", timeout_s, evidence=f"{DISCOVERY_VAR}=1")

    def number(name: str) -> int:
        value = env.get(name, "")
        return int(value) if value.isdigit() else 1

    # In the order of JAX's own detection (jax._src.clusters).
    if number("OMPI_COMM_WORLD_SIZE") > 1:
        evidence = f"OMPI_COMM_WORLD_SIZE={env['OMPI_COMM_WORLD_SIZE']}"
        if "OMPI_MCA_orte_hnp_uri" not in env:
            raise ValueError(
                f"{evidence} but OMPI_MCA_orte_hnp_uri is unset (Open MPI 5?): JAX cannot find "
                "the coordinator. Set PTJAX_COORDINATOR=host:port, PTJAX_NUM_PROCESSES="
                "$OMPI_COMM_WORLD_SIZE and PTJAX_PROCESS_ID=$OMPI_COMM_WORLD_RANK."
            )
        return ClusterPlan("ompi", timeout_s, evidence=evidence)
    warning = ""
    slurm_var = "SLURM_STEP_NUM_TASKS" if env.get("SLURM_STEP_NUM_TASKS") else "SLURM_NTASKS"
    if number(slurm_var) > 1:
        evidence = f"{slurm_var}={env[slurm_var]}"
        missing = [name for name in _SLURM_VARS if name not in env]
        if not missing:
            return ClusterPlan("slurm", timeout_s, evidence=evidence)
        warning = (
            f"{evidence} but {', '.join(missing)} unset (not started by srun?): JAX cannot "
            "discover the other tasks, so this process runs alone."
        )
    hosts_var = next((name for name in _TPU_HOST_VARS if name in env), None)
    if tpu_vm and hosts_var is not None:  # GKE.
        hosts = len([h for h in env[hosts_var].split(",") if h.strip()])
        slices = number("MEGASCALE_NUM_SLICES")
        evidence = f"{hosts_var} ({hosts} hosts), MEGASCALE_NUM_SLICES={slices}"
        source = "tpu" if hosts * slices > 1 else "single"
        return ClusterPlan(source, timeout_s, evidence=evidence, warning=warning)
    if tpu_vm and "TPU_SKIP_MDS_QUERY" not in env:  # GCE: the worker list is in the metadata.
        return ClusterPlan("tpu", timeout_s, evidence="Cloud TPU VM metadata", warning=warning)
    if env.get("KUBERNETES_SERVICE_HOST") and env.get("JOB_COMPLETION_INDEX"):
        evidence = f"Kubernetes Indexed Job, JOB_COMPLETION_INDEX={env['JOB_COMPLETION_INDEX']}"
        return ClusterPlan("kubernetes", timeout_s, evidence=evidence, warning=warning)
    return ClusterPlan("single", timeout_s, warning=warning)


def missing_processes(message: str) -> list[int] | None:
    """The process ids a JAX start-up error names as never having joined ('Timed out task
    names: /job:jax_worker/replica:0/task:1 ...'), or None where it names none."""
    _, marker, rest = message.partition("task names")
    if not marker:
        return None
    ids = sorted({int(i) for i in re.findall(r"/task:(\d+)", rest)})
    return ids or None


def _start_failure(plan: ClusterPlan, error: BaseException | None) -> str:
    """The message of a multi-host start that failed (`error`) or timed out (None)."""
    from jax._src import distributed  # What JAX resolved before it began to wait.

    state = distributed.global_state
    if plan.source == "explicit":
        coordinator, count, index = plan.coordinator, plan.num_processes, plan.process_id
    elif state.coordinator_address is not None:  # JAX had discovered the cluster.
        coordinator, count, index = state.coordinator_address, state.num_processes, state.process_id
    else:
        coordinator, count, index = "unknown", None, "unknown"
    who = f"process {index} of {count or 'unknown'} (coordinator {coordinator}; {plan.evidence})"
    if error is None:
        head = f"Multi-host start-up timed out after {plan.timeout_s}s ({TIMEOUT_VAR}): {who}."
    else:
        head = f"Multi-host start-up failed: {who}: {type(error).__name__}: {error}"
    missing = missing_processes(str(error)) if error is not None else None
    if missing is not None:
        tail = f" Processes that never joined: {', '.join(map(str, missing))}."
    elif error is None and count:
        tail = (
            f" Expected processes 0-{count - 1} to join; JAX does not say which never did: "
            "check that each one started (process 0 runs the coordinator, so without it none "
            f"can join) and can reach {coordinator}, or raise {TIMEOUT_VAR}."
        )
    else:
        tail = ""
    return head + tail


def join_cluster(env: Mapping[str, str] | None = None) -> ClusterPlan:
    """Starts jax.distributed by cluster_plan(`env`, default os.environ), then logs this
    process's index, count, host and local devices. Raises RuntimeError naming the
    coordinator, this process and the missing peers when the others do not all join within
    PTJAX_INIT_TIMEOUT seconds. Must run before anything initializes JAX's backends.
    """
    import jax
    from jax._src import cloud_tpu_init

    plan = cluster_plan(os.environ if env is None else env, cloud_tpu_init.running_in_cloud_tpu_vm)
    if plan.warning:
        absl_logging.warning("%s", plan.warning)
    if plan.source == "kubernetes" and importlib.util.find_spec("kubernetes") is None:
        raise RuntimeError(
            f"{plan.evidence}: JAX finds the other pods through the kubernetes package (pip "
            f"install 'jax[k8s]'). Or set {', '.join(EXPLICIT_VARS)}; {DISCOVERY_VAR}=0 runs "
            "this pod alone."
        )
    if plan.distributed:
        kwargs: dict[str, Any] = {"initialization_timeout": plan.timeout_s + _JAX_DEADLINE_GRACE_S}
        if plan.source == "explicit":
            kwargs.update(
                coordinator_address=plan.coordinator,
                num_processes=plan.num_processes,
                process_id=plan.process_id,
            )
        absl_logging.info(
            "Joining a multi-host run (%s: %s); waiting up to %ds for every process.",
            plan.source,
            plan.evidence,
            plan.timeout_s,
        )
        # In a thread: JAX 0.10 does not raise when its deadline passes, it ends the process.
        errors: list[BaseException] = []

        def start() -> None:
            try:
                jax.distributed.initialize(**kwargs)
            except BaseException as e:  # Re-raised below, in the caller's thread.
                errors.append(e)

        thread = threading.Thread(target=start, name="ptjax-join-cluster", daemon=True)
        thread.start()
        thread.join(plan.timeout_s)
        if thread.is_alive() or errors:
            error = errors[0] if errors else None
            raise RuntimeError(_start_failure(plan, error)) from error
    devices = jax.local_devices()
    absl_logging.info(
        "Process %d of %d on host %s: %d local devices: %s.",
        jax.process_index(),
        jax.process_count(),
        socket.gethostname(),
        len(devices),
        ", ".join(str(d) for d in devices),
    )
    return plan
