"""Multi-host for real: 2 local CPU processes x 4 fake devices against 1 process x 8 devices.

Each run is the real trainer (`trainer.train_and_evaluate`) on the tiny GPT, dropout on; the
two processes of a run are processes of their own and join with `jax.distributed` (coordinator
on 127.0.0.1, gloo collectives), the one-process runs are made in the test's process. Their
per-step train losses, read back from TensorBoard, must equal the one-process run's, in pmap
and in mesh mode (an FSDP mesh, (1, 8, 1)), and a two-process run stopped after 3 steps must
resume in one process and go on with the uninterrupted run's losses.
Its sharded checkpoint (each process wrote its own shards) restores bit for bit into the one
process's mesh and, from copies, into a (8, 1, 1) and a (2, 2, 2) mesh of two processes, and
those runs go on with the same losses.

The only stand-in is the data: ptjax's pipeline gives each process its own shard of the corpus,
so 2 processes and 1 process see different batches. Here every process reads the 1-process
stream of global batches and keeps its own devices' rows, so both layouts train on the same
global batches and their losses can be compared step by step.
"""

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import test_train_e2e as e2e
import xla_env
from test_train_e2e import read_scalars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6
STOP = 3  # The interrupted runs stop (with a checkpoint) after this many steps.
RTOL = 1e-5  # float32 round-off: the psum's order differs across processes.


# Meshes (data, fsdp, tensor) the mesh runs' step-3 checkpoint is resumed under, 2 x 4 devices.
RESHAPED = {
    "data": {"parallelism.fsdp": 1},
    "222": {"parallelism.fsdp": 2, "parallelism.tensor": 2},
}


def config_changes(mode):
    """tiny_config's changes for every run: 8 rows of 32 tokens a step; evals, samples, the best
    checkpoint and checkpoints all on, as in a default run (on a mesh every process decodes the
    samples with the sharded parameters; under pmap process 0 alone, on one device)."""
    changes = {
        "total_steps": STEPS,
        "eval_every_steps": 3,
        "checkpoint_every_steps": 3,
        "keep_checkpoints": 3,
        "dataset.max_eval_batches": 1,
        "sample_every_steps": 3,
        "sample_max_new_tokens": 4,
        "best_metric": "loss",
        "best_metric_mode": "min",
        "parallelism.mode": mode,
    }
    if mode == "mesh":
        changes["parallelism.fsdp"] = 8  # (1, 8, 1): every parameter sharded over all devices.
    return changes


class GlobalStreamSlice:
    """This process's rows of the 1-process pipeline's global batches [8, rows, ...].

    Every process saves the global stream's position, so process 0's copy resumes a run of
    any process count in one process.
    """

    def __init__(self, inner, process_index, local_devices):
        self._inner = inner
        self._rows = slice(process_index * local_devices, (process_index + 1) * local_devices)

    def __iter__(self):
        return self

    def __next__(self):
        return {k: v[self._rows] for k, v in next(self._inner).items()}

    def save(self, directory):
        return self._inner.save(directory)

    def restore(self, directory):
        self._inner.restore(directory)


def write_restored_params(config, workdir, path):
    """Restores the workdir's latest checkpoint as the trainer does, straight into this run's
    shardings, and writes (process 0) its step, its parameters gathered (a test's gather) and
    whether every array came back in the sharding asked for, to `path` (.npz)."""
    import functools

    import jax
    from flax import traverse_util
    from jax.experimental import multihost_utils

    from ptjax import models
    from ptjax.data.tokenizer import load_tokenizer
    from ptjax.train import optim, parallel
    from ptjax.train.checkpoint import Checkpointer
    from ptjax.train.state import init_params, init_state

    par = parallel.create(config.parallelism)
    model, _ = models.build(config, load_tokenizer(config.tokenizer.path).vocab_size)
    abstract_params = jax.eval_shape(
        functools.partial(init_params, config, model), jax.random.PRNGKey(0)
    )
    tx, _ = optim.make_optimizer(config.optimizer, config.total_steps, abstract_params)
    abstract = jax.eval_shape(functools.partial(init_state, config, model, tx))
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=3, read_only=True)
    step, state = checkpointer.restore_latest(abstract, None, par.shardings)
    checkpointer.close()
    wanted = jax.tree.leaves(par.shardings(abstract))
    as_asked = all(
        x.sharding.is_equivalent_to(s, x.ndim)
        for x, s in zip(jax.tree.leaves(state), wanted, strict=True)
    )
    params = multihost_utils.process_allgather(state.params, tiled=True)
    if jax.process_index() == 0:
        flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}
        np.savez(path, step=step, as_asked=as_asked, **flat)


def worker(index, count, port, workdir, data_dir, tokenizer_file, changes, stop_after):
    """One process of a run (the children's entry point, below)."""
    import logging

    from ptjax import runtime

    logging.basicConfig(
        level=logging.INFO, format="%(relativeCreated)6.0fms %(message)s", force=True
    )
    with runtime.start_up():  # As scripts/train.py.
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        if count > 1:
            jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=count, process_id=index)
        from ptjax.tasks.causal_lm import CausalLM
        from ptjax.train import trainer

    original = CausalLM.train_batches

    def train_batches(self, config, tokenizer, **kwargs):
        local = kwargs["local_device_count"]
        every = dict(kwargs, process_index=0, process_count=1, local_device_count=local * count)
        return GlobalStreamSlice(original(self, config, tokenizer, **every), index, local)

    CausalLM.train_batches = train_batches
    config = e2e.tiny_config(data_dir, tokenizer_file, **changes)
    assert jax.device_count() == 8, jax.devices()
    if os.environ.get("PTJAX_TEST_RESTORED"):  # First the checkpoint alone, then the run.
        write_restored_params(config, workdir, os.environ["PTJAX_TEST_RESTORED"])
    trainer.train_and_evaluate(config, workdir, stop_after_steps=stop_after)
    if count > 1:
        jax.distributed.shutdown()


class Run:
    """One run of `processes` x `8 / processes` CPU devices, its processes started now; their
    output goes to log files next to the workdir."""

    def __init__(
        self,
        workdir,
        processes,
        mode,
        data_dir,
        tokenizer_file,
        stop_after=None,
        changes=None,
        write_restored=False,
    ):
        """`changes`: config changes on top of config_changes(mode). `write_restored`: first
        write the restored checkpoint's parameters to WORKDIR.restored.npz (write_restored_params).
        """
        self.workdir = workdir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(
            os.environ,
            XLA_FLAGS=xla_env.xla_flags(devices=8 // processes),
            JAX_PLATFORMS="cpu",
            PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tests"), ROOT]),
            # The resumed runs reuse the compiled steps of the runs before them.
            JAX_COMPILATION_CACHE_DIR=os.path.join(os.path.dirname(workdir), "jax_cache"),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            PTJAX_TEST_RESTORED=f"{workdir}.restored.npz" if write_restored else "",
        )
        changes = {**config_changes(mode), **(changes or {})}
        args = [workdir, data_dir, tokenizer_file, json.dumps(changes)]
        name = f"{workdir}.{processes}x{8 // processes}.{stop_after or 'end'}"
        self.logs = [f"{name}.process{i}.log" for i in range(processes)]
        self.processes = []
        for i, log in enumerate(self.logs):
            with open(log, "w") as out:
                command = [sys.executable, __file__, str(i), str(processes), str(port), *args]
                self.processes.append(
                    subprocess.Popen(
                        [*command, str(stop_after or 0)],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )

    def finish(self, timeout=400):
        """Waits for every process; one failing stops the others (their collectives would
        wait for it). Returns the run's train losses {step: loss} from TensorBoard."""
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in self.processes):
            failed = any(p.poll() for p in self.processes)
            if failed or time.monotonic() > deadline:
                time.sleep(0 if time.monotonic() > deadline else 5)
                for p in self.processes:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
                break
            time.sleep(0.1)
        codes = [p.returncode for p in self.processes]
        if codes != [0] * len(codes):
            tails = []
            for log in self.logs:
                with open(log) as f:
                    tails.append(f"{log}:\n" + f.read()[-4000:])
            pytest.fail(f"exit codes {codes}\n" + "\n\n".join(tails))
        return read_scalars(self.workdir)["train/loss"]


class RunHere:
    """A 1 x 8 run in this process (the pytest worker's 8 fake devices and XLA flags, as the
    children's): made when it is waited for, by `finish`, while the started processes run."""

    def __init__(self, workdir, mode, data_dir, tokenizer_file, changes=None, write_restored=False):
        self.workdir, self.logs = workdir, []
        changes = {**config_changes(mode), **(changes or {})}
        self._config = e2e.tiny_config(data_dir, tokenizer_file, **changes)
        self._write_restored = write_restored

    def finish(self):
        from ptjax.train import trainer

        if self._write_restored:
            write_restored_params(self._config, self.workdir, f"{self.workdir}.restored.npz")
        trainer.train_and_evaluate(self._config, self.workdir)
        return read_scalars(self.workdir)["train/loss"]


def events_files(workdir):
    return [n for n in os.listdir(workdir) if n.startswith("events.out.tfevents")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir, tokenizer_file):
    """Every run of the module, as many at a time as can be; {name: {step: train loss}}.

    In each mode: 1 x 8 for 6 steps; 2 x 4 for 3 steps, then resumed by 1 x 8 in its workdir;
    in mesh mode also resumed (from copies of its workdir) by 2 x 4 under the RESHAPED meshes.
    """
    root = tmp_path_factory.mktemp("multihost")
    start = time.monotonic()

    def run(mode, processes, workdir, stop_after=None, changes=None, samples=False):
        """`changes` also asks the run to write the parameters it restored; only the runs
        whose samples are checked (the first 2 x 4 ones) decode them (the losses do not
        depend on it)."""
        path = str(root / workdir)
        restored = changes is not None
        changes = {**({} if samples else {"sample_every_steps": 0}), **(changes or {})}
        if processes == 1:  # The reference layout needs no process of its own.
            return RunHere(path, mode, data_dir, tokenizer_file, changes, restored)
        return Run(path, processes, mode, data_dir, tokenizer_file, stop_after, changes, restored)

    # The 2-process runs started first; the 1-process runs are made here meanwhile.
    first = {
        f"{mode} 2x4": run(mode, 2, f"{mode}_2_then_1", STOP, samples=True)
        for mode in ("pmap", "mesh")
    }
    first = {**{f"{mode} 1x8": run(mode, 1, mode) for mode in ("pmap", "mesh")}, **first}
    out, events, resumed, logs = {}, {}, {}, {}
    for name, started in first.items():
        out[name] = started.finish()
        events[name] = events_files(started.workdir)
        logs[name] = (started.workdir, started.logs)
        if name.endswith("2x4"):  # The 2-process run's checkpoint goes on in 1 process.
            mode = name.split()[0]
            if mode == "mesh":  # And, from copies, under other meshes of 2 processes.
                out["saved"] = str(root / "mesh_saved")
                shutil.copytree(started.workdir, out["saved"])
                for shape, changes in RESHAPED.items():
                    shutil.copytree(started.workdir, root / f"mesh_2_then_{shape}")
                    resumed[f"mesh 2x4 then {shape}"] = run(
                        mode, 2, f"mesh_2_then_{shape}", changes=changes
                    )
            # In mesh mode it also first writes the parameters it restored (write_restored).
            changes = {} if mode == "mesh" else None
            resumed[f"{name} then 1x8"] = run(mode, 1, f"{mode}_2_then_1", changes=changes)
    for name, started in resumed.items():
        out[name] = started.finish()
        events[name] = events_files(started.workdir)
        logs[name] = (started.workdir, started.logs)
    out["events"] = events
    out["logs"] = logs
    print(f"\n{len(out) - 3} runs of the trainer in {time.monotonic() - start:.0f}s")
    return out


def assert_same_losses(losses, reference, steps):
    assert set(steps) <= set(losses), sorted(losses)
    got = np.array([losses[s] for s in steps])
    want = np.array([reference[s] for s in steps])
    np.testing.assert_allclose(got, want, rtol=RTOL, err_msg=f"steps {list(steps)}")


@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_two_processes_train_like_one(runs, mode):
    assert sorted(runs[f"{mode} 1x8"]) == list(range(1, STEPS + 1))
    assert sorted(runs[f"{mode} 2x4"]) == list(range(1, STOP + 1))
    assert_same_losses(runs[f"{mode} 2x4"], runs[f"{mode} 1x8"], range(1, STOP + 1))


@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_two_process_checkpoint_resumes_in_one_process(runs, mode):
    """Steps 1-3 on 2 x 4 devices, 4-6 on 1 x 8 from its checkpoint: the losses of 1 x 8."""
    resumed = runs[f"{mode} 2x4 then 1x8"]
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert_same_losses(resumed, runs[f"{mode} 1x8"], range(1, STEPS + 1))


def test_each_process_writes_its_own_shards(runs):
    """The FSDP run's checkpoint: both processes wrote parameter data of their own (Orbax's
    OCDBT files per process), and nothing was gathered to write it."""
    state = os.path.join(runs["saved"], "checkpoints", str(STOP), "state")
    for process in (0, 1):
        files = glob.glob(os.path.join(state, f"ocdbt.process_{process}", "d", "*"))
        assert files and sum(os.path.getsize(f) for f in files) > 0, os.listdir(state)


@pytest.mark.parametrize("shape", [*sorted(RESHAPED), "1x8"])
def test_sharded_checkpoint_restores_into_other_meshes(runs, shape):
    """Read straight into a (8, 1, 1) or (2, 2, 2) mesh of 2 processes, or the (1, 8, 1) mesh of
    1 process: every array in the sharding asked for, the parameters bit for bit as saved; the
    run goes on with the uninterrupted run's losses."""
    from flax import traverse_util

    from ptjax.train import checkpoint

    restored = np.load(os.path.join(runs["logs"][f"mesh 2x4 then {shape}"][0] + ".restored.npz"))
    assert int(restored["step"]) == STOP and bool(restored["as_asked"])
    saved = checkpoint.saved_params(os.path.join(runs["saved"], "checkpoints", str(STOP)))
    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(saved).items()}
    assert sorted(flat) == sorted(k for k in restored.files if k not in ("step", "as_asked"))
    for key, value in flat.items():
        np.testing.assert_array_equal(restored[key], value, err_msg=key)
    losses = runs[f"mesh 2x4 then {shape}"]
    assert_same_losses(losses, runs["mesh 1x8"], range(1, STEPS + 1))


def test_only_process_zero_writes_tensorboard(runs):
    """One events file per invocation: process 1 of a 2-process run writes none."""
    counts = {name: len(files) for name, files in runs["events"].items()}
    assert counts == {
        "pmap 1x8": 1,
        "pmap 2x4": 1,
        "pmap 2x4 then 1x8": 2,
        "mesh 1x8": 1,
        "mesh 2x4": 1,
        "mesh 2x4 then 1x8": 2,
        "mesh 2x4 then data": 2,
        "mesh 2x4 then 222": 2,
    }


if __name__ == "__main__":
    index, count, port, workdir, data, spm, changes, stop = sys.argv[1:]
    worker(int(index), int(count), port, workdir, data, spm, json.loads(changes), int(stop) or None)


@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_two_processes_sample_evaluate_and_keep_the_best(runs, mode):
    """Samples (process 0 only), evals and the best checkpoint all ran, and the run finished."""
    workdir, logs = runs["logs"][f"{mode} 2x4"]
    with open(logs[0]) as f:
        log = f.read()
    assert "sample at step 3:" in log and "eval at step 3:" in log
    assert "New best loss=" in log and " at step 3" in log
    with open(os.path.join(workdir, "best", "best.json")) as f:  # The resumed run's too.
        assert json.load(f)["step"] in (3, STEPS)
    with open(logs[1]) as f:
        assert "sample at step" not in f.read()
