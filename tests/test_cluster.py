"""Multi-host start-up and meshes that fit the hardware.

`runtime.cluster_plan` is checked case by case on environments alone; `runtime.join_cluster`
for real in child processes on 127.0.0.1 (gloo collectives, as tests/test_multihost.py, but
tiny): two processes x 4 CPU devices build DCN meshes and sum a global batch over them, and a
start whose peers never come fails with a RuntimeError at PTJAX_INIT_TIMEOUT. Meshes are
checked on the 8 fake devices, and DCN layouts on stand-in devices of two processes.
"""

import gc
import json
import os
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import jax
import numpy as np
import pytest
import xla_env

from ptjax import runtime
from ptjax.config import ConfigError, base_config
from ptjax.train import parallel, sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARD_TIMEOUT_S = 120  # A child still running then is killed: no test can hang.

SLURM = {
    "SLURM_JOB_ID": "7",
    "SLURM_STEP_NODELIST": "node[001-002]",
    "SLURM_NTASKS": "4",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "1",
}
EXPLICIT = {"PTJAX_COORDINATOR": "10.0.0.1:1234", "PTJAX_NUM_PROCESSES": "4"}


def test_start_up_pauses_the_collector_then_freezes_what_was_made():
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    with pytest.raises(ImportError), runtime.start_up():
        assert not gc.isenabled()
        made = [[] for _ in range(1000)]
        raise ImportError("an import that fails still ends the start-up")
    assert gc.isenabled() and gc.get_freeze_count() >= frozen + len(made)
    gc.disable()  # A caller that had paused the collector finds it still paused.
    try:
        with runtime.start_up():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize(
    "env,tpu_vm,source",
    [
        ({}, False, "single"),
        ({**EXPLICIT, "PTJAX_PROCESS_ID": "3"}, False, "explicit"),
        ({**EXPLICIT, "PTJAX_PROCESS_ID": "0", "PTJAX_DISTRIBUTED": "0"}, False, "explicit"),
        (SLURM, False, "slurm"),
        ({**SLURM, "SLURM_NTASKS": "1"}, False, "single"),
        ({**SLURM, "SLURM_STEP_NUM_TASKS": "1"}, False, "single"),  # The step's count wins.
        ({**SLURM, "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "2"}, False, "slurm"),
        ({**SLURM, "PTJAX_DISTRIBUTED": "0"}, False, "single"),
        ({"PTJAX_DISTRIBUTED": "1"}, False, "forced"),
        ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_MCA_orte_hnp_uri": "1;tcp://h:1"}, False, "ompi"),
        ({"OMPI_COMM_WORLD_SIZE": "1"}, False, "single"),
        ({"TPU_WORKER_HOSTNAMES": "t0,t1"}, True, "tpu"),  # GKE.
        ({"TPU_WORKER_HOSTNAMES": "t0,t1"}, False, "single"),  # Not a TPU VM: not JAX's TPU.
        ({"TPU_WORKER_HOSTNAMES": "t0"}, True, "single"),
        ({"TPU_PROCESS_ADDRESSES": "t0:1", "MEGASCALE_NUM_SLICES": "2"}, True, "tpu"),
        ({}, True, "tpu"),  # GCE: JAX reads the worker list from the VM's metadata.
        ({"TPU_SKIP_MDS_QUERY": "1"}, True, "single"),
        ({"KUBERNETES_SERVICE_HOST": "10.0.0.9", "JOB_COMPLETION_INDEX": "1"}, False, "kubernetes"),
        ({"KUBERNETES_SERVICE_HOST": "10.0.0.9"}, False, "single"),  # Not an Indexed Job.
    ],
)
def test_cluster_plan_reads_the_environment(env, tpu_vm, source):
    plan = runtime.cluster_plan(env, tpu_vm=tpu_vm)
    assert plan.source == source
    assert plan.distributed == (source != "single")
    assert plan.timeout_s == runtime.DEFAULT_TIMEOUT_S
    if source == "explicit":
        assert (plan.coordinator, plan.num_processes) == ("10.0.0.1:1234", 4)
        assert plan.process_id == int(env["PTJAX_PROCESS_ID"])


def test_cluster_plan_warns_of_slurm_tasks_it_cannot_join():
    """sbatch --ntasks=4 without srun: SLURM_NTASKS=4 but no step; the process runs alone."""
    env = {k: v for k, v in SLURM.items() if k != "SLURM_STEP_NODELIST"}
    plan = runtime.cluster_plan(env)
    assert plan.source == "single"
    assert "SLURM_NTASKS=4" in plan.warning and "SLURM_STEP_NODELIST" in plan.warning


@pytest.mark.parametrize(
    "env,match",
    [
        ({"PTJAX_COORDINATOR": "h:1"}, "without PTJAX_NUM_PROCESSES, PTJAX_PROCESS_ID"),
        (EXPLICIT, "without PTJAX_PROCESS_ID"),
        ({"PTJAX_NUM_PROCESSES": "2", "PTJAX_PROCESS_ID": "0"}, "without PTJAX_COORDINATOR"),
        ({**EXPLICIT, "PTJAX_PROCESS_ID": "4"}, r"PTJAX_PROCESS_ID=4 must lie in \[0, "),
        ({**EXPLICIT, "PTJAX_PROCESS_ID": "x"}, "PTJAX_PROCESS_ID='x'"),
        ({**EXPLICIT, "PTJAX_PROCESS_ID": "0", "PTJAX_NUM_PROCESSES": "0"}, "NUM_PROCESSES='0'"),
        ({**EXPLICIT, "PTJAX_PROCESS_ID": "0", "PTJAX_COORDINATOR": "h"}, "host:port"),
        ({"PTJAX_DISTRIBUTED": "yes"}, "PTJAX_DISTRIBUTED='yes'"),
        ({"PTJAX_INIT_TIMEOUT": "0"}, "PTJAX_INIT_TIMEOUT='0'"),
        ({"PTJAX_INIT_TIMEOUT": "soon"}, "PTJAX_INIT_TIMEOUT='soon'"),
        ({"OMPI_COMM_WORLD_SIZE": "2"}, "OMPI_MCA_orte_hnp_uri is unset"),
    ],
)
def test_cluster_plan_names_bad_variables(env, match):
    with pytest.raises(ValueError, match=match):
        runtime.cluster_plan(env)


def test_cluster_plan_takes_the_start_up_timeout():
    assert runtime.cluster_plan({"PTJAX_INIT_TIMEOUT": "7"}).timeout_s == 7


def test_missing_processes_are_read_from_jax_errors():
    """The form of JAX's barrier time-out (jax 0.4); JAX 0.10's names no task."""
    old = (
        "DEADLINE_EXCEEDED: Barrier timed out. Barrier_id: PjRT_Client_Connect. Timed out "
        "task names:\n/job:jax_worker/replica:0/task:3\n/job:jax_worker/replica:0/task:1\n"
    )
    assert runtime.missing_processes(old) == [1, 3]
    assert runtime.missing_processes("DEADLINE_EXCEEDED: Deadline Exceeded") is None


def test_a_single_process_logs_where_it_runs(caplog):
    with caplog.at_level("INFO"):
        plan = runtime.join_cluster({})
    assert plan.source == "single"
    assert f"Process 0 of 1 on host {socket.gethostname()}: 8 local devices: " in caplog.text


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 8, 1)])
def test_mesh_covers_every_device_once(shape):
    mesh = sharding.make_mesh(shape)
    assert mesh.axis_names == sharding.MESH_AXES
    assert mesh.devices.shape == shape
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
    # On CPU mesh_utils keeps the devices' order: the mesh of before, a plain reshape.
    assert [d.id for d in mesh.devices.flat] == [d.id for d in jax.devices()]


def _parallelism(**changes):
    p = base_config().parallelism
    p.mode = "mesh"
    for key, value in changes.items():
        setattr(p, key, value)
    return p


def test_create_builds_the_configured_mesh():
    mesh = parallel.create(_parallelism(fsdp=2, tensor=2)).mesh
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(dcn_data=2), r"dcn_data=2 x parallelism.dcn_fsdp=1 must equal .* processes .*: 1\."),
        (dict(fsdp=2, dcn_fsdp=2), r"dcn_fsdp=2 must equal .*: 1\."),
        (dict(dcn_data=3), r"dcn_data=3 must divide the data axis, 8 devices long \(.*data=-1\)"),
        (dict(fsdp=2, dcn_fsdp=4), r"dcn_fsdp=4 must divide the fsdp axis, 2 devices long"),
    ],
)
def test_create_refuses_dcn_axes_that_do_not_fit(changes, match):
    with pytest.raises(ConfigError, match=match):
        parallel.create(_parallelism(**changes))


def _stand_in_devices(processes, per_process, platform="cpu", processes_per_slice=None):
    """Objects with the attributes mesh_utils reads, numbered as JAX numbers devices."""
    devices = []
    for p in range(processes):
        for i in range(per_process):
            device = SimpleNamespace(
                id=p * per_process + i, process_index=p, platform=platform, device_kind=platform
            )
            if processes_per_slice:
                device.slice_index = p // processes_per_slice
            devices.append(device)
    return devices


@pytest.mark.parametrize(
    "shape,dcn_shape,block",
    [
        ((4, 2, 1), (2, 1, 1), lambda grid, p: grid[2 * p : 2 * p + 2]),  # Data over processes.
        ((2, 4, 1), (1, 2, 1), lambda grid, p: grid[:, 2 * p : 2 * p + 2]),  # FSDP over them.
        ((2, 2, 2), (2, 1, 1), lambda grid, p: grid[p : p + 1]),
    ],
)
def test_dcn_axes_give_each_process_one_block(shape, dcn_shape, block):
    devices = _stand_in_devices(2, 4)
    grid = sharding.device_grid(shape, devices, dcn_shape)
    assert grid.shape == shape
    assert sorted(d.id for d in grid.flat) == list(range(8))
    for p in range(2):
        assert {d.process_index for d in block(grid, p).flat} == {p}


def test_tpu_slices_are_the_dcn_granules():
    devices = _stand_in_devices(4, 2, platform="tpu", processes_per_slice=2)
    assert sharding.granules(devices) == ("slice", 2)
    assert sharding.granules(_stand_in_devices(4, 2)) == ("process", 4)
    with pytest.raises(ValueError, match=r"spans 1 slice\(s\); the devices are in 2"):
        sharding.device_grid((8, 1, 1), devices)  # Two slices need a DCN axis.


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(role, index, count, port, timeout_s, devices=4):
    env = dict(
        os.environ,
        XLA_FLAGS=xla_env.xla_flags(devices=devices),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=ROOT,
        PTJAX_COORDINATOR=f"127.0.0.1:{port}",
        PTJAX_NUM_PROCESSES=str(count),
        PTJAX_PROCESS_ID=str(index),
        PTJAX_INIT_TIMEOUT=str(timeout_s),
    )
    command = [sys.executable, os.path.abspath(__file__), role]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(processes):
    """(exit code, output) of each child; all killed at HARD_TIMEOUT_S."""
    deadline = time.monotonic() + HARD_TIMEOUT_S
    out = []
    for p in processes:
        try:
            text, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in processes:
                q.kill()
            text, _ = p.communicate()
        out.append((p.returncode, text.decode(errors="replace")))
    return out


def mesh_worker():
    """One of 2 processes x 4 devices: join, build DCN meshes, sum a global batch on each."""
    import logging

    import jax.numpy as jnp

    logging.basicConfig(level=logging.INFO, force=True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    runtime.join_cluster()
    index = jax.process_index()
    report = {}
    for name, changes in {
        "dcn_data": dict(fsdp=2, dcn_data=2),  # (4, 2, 1): each process 2 rows of the data axis.
        "dcn_fsdp": dict(data=2, fsdp=4, dcn_fsdp=2),  # (2, 4, 1): 2 columns of the fsdp axis.
    }.items():
        mesh = parallel.create(_parallelism(**changes)).mesh
        rows = sharding.batch_sharding(mesh)
        local = np.arange(4 * 3, dtype=np.float32).reshape(4, 3) + 100 * index
        batch = jax.make_array_from_process_local_data(rows, local)  # [8, 3]
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        total = jax.jit(jnp.sum, out_shardings=replicated)
        report[name] = {
            "shape": list(mesh.devices.shape),
            "processes": np.vectorize(lambda d: d.process_index)(mesh.devices).tolist(),
            "sum": float(total(batch)),
            "local_rows": parallel.local_rows(batch).tolist() == local.tolist(),
        }
    print("REPORT " + json.dumps(report), flush=True)
    jax.distributed.shutdown()


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_two_processes_build_dcn_meshes_over_their_devices():
    port = _free_port()
    results = _finish([_start("mesh", i, 2, port, timeout_s=60) for i in range(2)])
    for code, text in results:
        assert code == 0, text[-4000:]
    reports = [json.loads(t.split("REPORT ", 1)[1].splitlines()[0]) for _, t in results]
    assert reports[0] == reports[1]
    want_sum = float(2 * np.arange(12).sum() + 100 * 12)
    data, fsdp = reports[0]["dcn_data"], reports[0]["dcn_fsdp"]
    assert data["shape"] == [4, 2, 1] and fsdp["shape"] == [2, 4, 1]
    # Each process's 4 devices are one block: rows 0-1 / 2-3 of data, columns of fsdp.
    assert np.array_equal(np.array(data["processes"])[:, :, 0], [[0, 0], [0, 0], [1, 1], [1, 1]])
    assert np.array_equal(np.array(fsdp["processes"])[:, :, 0], [[0, 0, 1, 1], [0, 0, 1, 1]])
    for report in (data, fsdp):
        assert report["sum"] == want_sum and report["local_rows"]
    for index, (_, text) in enumerate(results):
        assert f"Process {index} of 2 on host" in text


def timeout_worker():
    """Joins a run whose other processes never start; prints the error it gets."""
    try:
        runtime.join_cluster()
    except RuntimeError as e:
        print(f"RUNTIME_ERROR {e}", flush=True)
        sys.exit(3)


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_start_up_times_out_naming_the_missing_processes():
    """Process 0 of 2 alone (its peer never starts), and process 1 of 2 alone (no coordinator):
    each raises RuntimeError after PTJAX_INIT_TIMEOUT=5 s, before JAX ends the process."""
    ports = [_free_port(), _free_port()]
    start = time.monotonic()
    results = _finish([_start("timeout", i, 2, ports[i], timeout_s=5) for i in range(2)])
    assert time.monotonic() - start < HARD_TIMEOUT_S - 1
    for index, (code, text) in enumerate(results):
        assert code == 3, text[-4000:]
        message = text.split("RUNTIME_ERROR ", 1)[1]
        assert "Multi-host start-up timed out after 5s (PTJAX_INIT_TIMEOUT)" in message
        assert f"process {index} of 2 (coordinator 127.0.0.1:{ports[index]};" in message
        assert "Expected processes 0-1 to join" in message


if __name__ == "__main__":
    {"mesh": mesh_worker, "timeout": timeout_worker}[sys.argv[1]]()
