"""Losing nothing: SIGTERM, kill -9 at random points, NaN steps, corrupt checkpoints, the run lock.

The subprocess tests run `scripts/train.py` for real on 1 CPU device: an uninterrupted reference
run, and one workdir that is stopped by SIGTERM and then killed with SIGKILL at several points
(during start-up, at random steps, in the middle of a checkpoint write) and resumed each time.
Every train loss it logged, read back from TensorBoard, must equal the reference's.
"""

import glob
import json
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
import test_train_e2e as e2e
import xla_env
from test_train_e2e import read_scalars, snapshot, tiny_config

from ptjax.data.builders import text as text_builders
from ptjax.data.tf_setup import import_tf
from ptjax.tasks.causal_lm import CausalLM
from ptjax.train import lock, metrics, preemption, trainer
from ptjax.train.checkpoint import CorruptCheckpointError, restore_params

tf = import_tf()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 30
STEP_LINE = re.compile(rf"\] step (\d+)/{TOTAL} ")
KILL_SEED = 2026


def read_losses(workdir):
    """{step: train/loss}; later event files win (a resumed run re-logs steps); a record cut
    short by kill -9 ends its file."""
    out = {}
    for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    if value.tag == "train/loss":
                        out[event.step] = float(tf.make_ndarray(value.tensor))
        except tf.errors.DataLossError:
            pass
    return out


class Run:
    """scripts/train.py in a subprocess on 1 CPU device, its log lines collected as they come."""

    def __init__(self, workdir, data_dir, tokenizer_file):
        overrides = {
            "dataset.data_dir": data_dir,
            "tokenizer.path": tokenizer_file,
            "model.num_layers": 1,  # As test_train_e2e.tiny_config.
            "seq_len": 32,
            "per_device_batch_size": 4,
            "total_steps": TOTAL,
            "optimizer.warmup_steps": 2,
            "log_every_steps": 1,
            "eval_every_steps": 1000,
            "checkpoint_every_steps": 3,
            "keep_checkpoints": 20,  # Nothing is garbage-collected: every file must survive.
            "dataset.max_eval_batches": 1,
            "dataset.shuffle_buffer": 64,
            "sample_every_steps": 0,
        }
        command = [
            sys.executable,
            os.path.join(ROOT, "scripts", "train.py"),
            f"--config={os.path.join(ROOT, 'configs', 'gpt_tiny.py')}",
            f"--workdir={workdir}",
            *(f"--config.{k}={v}" for k, v in overrides.items()),
        ]
        env = dict(os.environ, XLA_FLAGS=xla_env.xla_flags(devices=1), JAX_PLATFORMS="cpu")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def log(self):
        return "".join(self.lines)

    def last_step(self):
        steps = [int(m.group(1)) for line in self.lines if (m := STEP_LINE.search(line))]
        return max(steps, default=0)

    def wait_until(self, predicate, timeout=120):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.process.poll() is None or predicate(), f"exited early:\n{self.log[-3000:]}"
            assert time.monotonic() < deadline, f"timed out:\n{self.log[-3000:]}"
            time.sleep(0.002)

    def finish(self, timeout=180):
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def kill(self, signum=signal.SIGKILL):
        self.process.send_signal(signum)
        return self.finish()


def complete_steps(workdir):
    directory = os.path.join(workdir, "checkpoints")
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return sorted(int(n) for n in names if n.isdigit())


def temporary_dirs(workdir):
    return glob.glob(os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp*"))


def lasting_files(workdir):
    """snapshot() without what a kill may leave half-done: the lock and Orbax's temporaries."""
    return {
        path: stat
        for path, stat in snapshot(workdir).items()
        if ".orbax-checkpoint-tmp" not in path and not path.endswith("run.lock")
    }


def kill_point(kind, workdir, data_dir, tokenizer_file, rng):
    """Restarts the run in `workdir` and kill -9s it at a point of the given kind."""
    before = lasting_files(workdir)
    resume_from = complete_steps(workdir)[-1]
    leftovers = set(temporary_dirs(workdir))
    run = Run(workdir, data_dir, tokenizer_file)
    if kind == "start-up":  # Somewhere in imports, restore or compilation.
        delay = rng.uniform(2.0, 9.0)
        run.wait_until(lambda: time.monotonic() - run.started > delay or run.last_step())
    else:
        resuming = f"Resuming from {os.path.join(workdir, 'checkpoints', str(resume_from))}\n"
        run.wait_until(lambda: "Resuming from" in run.log)
        assert resuming in run.log, run.log[-3000:]
        # Orbax deletes the temporary directory of a killed save (in the background).
        run.wait_until(lambda: not leftovers & set(temporary_dirs(workdir)))
        if kind == "step":
            target = rng.randint(min(resume_from + 5, TOTAL - 3), min(resume_from + 14, TOTAL - 3))
            run.wait_until(lambda: run.last_step() >= target)
        else:  # As soon as Orbax has started writing a step into its temporary directory.
            run.wait_until(lambda: temporary_dirs(workdir))
    code = run.kill()
    assert code == -signal.SIGKILL, run.log[-3000:]
    return {
        "kind": kind,
        "after_step": run.last_step(),
        "resumed_from": resume_from,
        "left_partial_save": bool(temporary_dirs(workdir)),
        "took_over_lock": "Taking over" in run.log,
        "before": before,
    }


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, data_dir, tokenizer_file):
    """A reference run, and a run stopped by SIGTERM, then kill -9'd at several points."""
    root = tmp_path_factory.mktemp("interrupted")
    reference = Run(str(root / "reference"), data_dir, tokenizer_file)  # Runs alongside.
    workdir = str(root / "run")
    out = {"workdir": workdir, "kills": [], "busy_error": None}

    # 1. SIGTERM after step 3; meanwhile a second process (this one) must be refused.
    run = Run(workdir, data_dir, tokenizer_file)
    run.wait_until(lambda: "Model gpt/tiny" in run.log)  # Logged once the lock is held.
    with pytest.raises(trainer.WorkdirError) as busy:
        trainer.train_and_evaluate(tiny_config(data_dir, tokenizer_file), workdir)
    out["busy_error"], out["sigterm_pid"] = str(busy.value), run.process.pid
    run.wait_until(lambda: run.last_step() >= 3)
    out["sigterm_code"] = run.kill(signal.SIGTERM)
    out["sigterm_log"] = run.log

    # 2. kill -9 at several points; each restart must resume from the last complete checkpoint.
    rng = random.Random(KILL_SEED)
    stale_lock = False
    for kind in ["start-up", "step", "checkpoint write", "step"]:
        kill = kill_point(kind, workdir, data_dir, tokenizer_file, rng)
        kill["stale_lock_found"] = stale_lock
        out["kills"].append(kill)
        stale_lock = os.path.exists(os.path.join(workdir, "run.lock"))

    # 3. The last restart runs to the end.
    run = Run(workdir, data_dir, tokenizer_file)
    out["final_code"] = run.finish()
    out["final_log"] = run.log
    out["after"] = lasting_files(workdir)
    assert reference.finish() == 0, reference.log[-3000:]
    out["reference"] = read_losses(str(root / "reference"))
    out["losses"] = read_losses(workdir)
    return out


def test_sigterm_saves_the_step_and_exits_zero(interrupted):
    assert interrupted["sigterm_code"] == 0, interrupted["sigterm_log"][-3000:]
    found = re.search(
        r"Preempted by SIGTERM at step (\d+); checkpoint saved in (\S+); rerun the same command "
        "to resume",
        interrupted["sigterm_log"],
    )
    assert found, interrupted["sigterm_log"][-3000:]
    step, path = int(found.group(1)), found.group(2)
    assert 3 <= step < TOTAL
    assert path == os.path.join(interrupted["workdir"], "checkpoints", str(step))
    assert os.path.isdir(os.path.join(path, "state")) and os.path.isdir(os.path.join(path, "data"))
    # The step was logged and saved although it is no multiple of the intervals.
    assert interrupted["kills"][0]["resumed_from"] == step


def test_second_process_on_a_busy_workdir_is_refused(interrupted):
    message = interrupted["busy_error"]
    assert f"pid {interrupted['sigterm_pid']}" in message and "run.lock" in message


def test_kill_9_anywhere_resumes_exactly_and_touches_nothing(interrupted):
    kills = interrupted["kills"]
    assert interrupted["final_code"] == 0, interrupted["final_log"][-3000:]
    assert [k["kind"] for k in kills] == ["start-up", "step", "checkpoint write", "step"]
    write_kill = kills[2]
    assert write_kill["left_partial_save"], "the kill did not land inside a checkpoint write"
    # A lock left by a killed run is stale and taken over (lock checks precede start-up kills).
    found = [k for k in kills if k["stale_lock_found"] and k["kind"] != "start-up"]
    assert found and all(k["took_over_lock"] for k in found)
    assert "Taking over" in interrupted["final_log"]
    # Every file that existed before each kill is still there, byte for byte (size and mtime).
    for kill in kills:
        for path, stat in kill["before"].items():
            assert interrupted["after"].get(path) == stat, path
    assert not temporary_dirs(interrupted["workdir"])
    reference, losses = interrupted["reference"], interrupted["losses"]
    assert sorted(reference) == list(range(1, TOTAL + 1))
    assert sorted(losses) == list(range(1, TOTAL + 1))
    for step in range(1, TOTAL + 1):
        assert losses[step] == reference[step], step
    points = [
        (k["kind"], k["resumed_from"], k["after_step"], k["left_partial_save"]) for k in kills
    ]
    print(
        f"\nSurvived 1 SIGTERM and {len(kills)} SIGKILLs (kind, resumed from, killed after "
        f"step, mid-save): {points}"
    )


class Poisoned:
    """Train batches whose `at`-th batch has NaN weights, hence a NaN loss at step `at`."""

    def __init__(self, inner, at):
        self._inner, self._at, self._count = inner, at, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._inner)
        self._count += 1
        if self._count == self._at:
            batch = {**batch, "weights": batch["weights"] * np.nan}
        return batch

    def __getattr__(self, name):  # save / restore / element_spec of the real iterator.
        return getattr(self._inner, name)


def poison_step(monkeypatch, at):
    original = CausalLM.train_batches
    monkeypatch.setattr(
        CausalLM, "train_batches", lambda self, *a, **k: Poisoned(original(self, *a, **k), at)
    )


def test_nan_stops_naming_the_step_and_saves_nothing_after_it(
    monkeypatch,
    tmp_path,
    data_dir,
    tokenizer_file,
):
    poison_step(monkeypatch, at=5)
    # Checkpoints at 3 and 6, logs at 4 and 8: the NaN of step 5 is caught before the save at 6.
    config = tiny_config(
        data_dir,
        tokenizer_file,
        total_steps=8,
        log_every_steps=4,
        checkpoint_every_steps=3,
        sample_every_steps=0,
    )
    workdir = str(tmp_path / "run")
    with pytest.raises(
        metrics.NonFiniteLossError, match=r"at step 5; the last good checkpoint is "
    ):
        trainer.train_and_evaluate(config, workdir)
    assert complete_steps(workdir) == [3]
    assert not os.path.exists(os.path.join(workdir, "run.lock"))


def test_nan_skip_keeps_the_old_update_and_counts_it(
    monkeypatch,
    tmp_path,
    data_dir,
    tokenizer_file,
):
    poison_step(monkeypatch, at=3)
    config = tiny_config(
        data_dir,
        tokenizer_file,
        total_steps=5,
        checkpoint_every_steps=1,
        keep_checkpoints=5,
        eval_every_steps=5,
        sample_every_steps=0,
        nonfinite_policy="skip",
    )
    workdir = str(tmp_path / "run")
    result = trainer.train_and_evaluate(config, workdir)
    assert result["step"] == 5 and np.isfinite(result["eval"]["loss"])
    scalars = read_scalars(workdir)
    assert scalars["train/skipped_steps"] == {1: 0, 2: 0, 3: 1, 4: 0, 5: 0}
    assert np.isnan(scalars["train/loss"][3]) and np.isfinite(scalars["train/loss"][4])
    # Step 3 changed nothing: the parameters saved after it equal those after step 2.
    abstract = e2e._abstract_params(workdir)
    params = {
        s: restore_params(os.path.join(workdir, "checkpoints", str(s)), abstract) for s in (2, 3, 4)
    }
    same = jax.tree.map(np.array_equal, params[2], params[3])
    assert all(jax.tree.leaves(same))
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, params[3], params[4])))


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory, data_dir, tokenizer_file):
    """6 steps of an 8-step run, with checkpoints at 2, 4 and 6."""
    workdir = str(tmp_path_factory.mktemp("six") / "run")
    config = tiny_config(
        data_dir,
        tokenizer_file,
        total_steps=8,
        checkpoint_every_steps=2,
        keep_checkpoints=3,
        eval_every_steps=8,
        sample_every_steps=0,
    )
    trainer.train_and_evaluate(config, workdir, stop_after_steps=6)
    return workdir, config


def _truncate_state(step_dir):
    for path in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True):
        if os.path.isfile(path) and os.path.getsize(path) > 1000:
            with open(path, "r+b") as f:
                f.truncate(100)


def test_corrupt_newest_checkpoints_fall_back_and_are_kept(six_steps, tmp_path):
    source, config = six_steps
    workdir = str(tmp_path / "copy")
    shutil.copytree(source, workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    _truncate_state(os.path.join(checkpoints, "6"))  # A truncated file.
    index = glob.glob(os.path.join(checkpoints, "4", "data", "**", "*.index"), recursive=True)
    os.remove(index[0])  # A deleted file (the input-pipeline position).
    damaged = {s: snapshot(os.path.join(checkpoints, s)) for s in ("4", "6")}
    result = trainer.train_and_evaluate(config, workdir)
    assert result["step"] == 8
    names = sorted(os.listdir(checkpoints))
    assert [n for n in names if n.isdigit()] == ["4", "6", "8"]  # Step 2 was garbage-collected.
    for step, files in damaged.items():
        (kept,) = [n for n in names if n.startswith(f"{step}.unreadable-")]
        moved = {
            p.replace(f"/{kept}/", f"/{step}/"): s
            for p, s in snapshot(os.path.join(checkpoints, kept)).items()
        }
        assert moved == files  # Kept as it was, byte for byte.
    # Resumed from step 2: steps 3..6 were trained again, to the same losses.
    original, resumed = read_scalars(source)["train/loss"], read_scalars(workdir)["train/loss"]
    for step in range(3, 7):
        assert resumed[step] == original[step], step


def test_no_readable_checkpoint_fails_clearly_and_changes_nothing(six_steps, tmp_path):
    source, config = six_steps
    workdir = str(tmp_path / "copy")
    shutil.copytree(source, workdir)
    for step in ("2", "4", "6"):
        _truncate_state(os.path.join(workdir, "checkpoints", step))
    before = snapshot(workdir)
    with pytest.raises(CorruptCheckpointError, match=r"No checkpoint in .* can be read") as error:
        trainer.train_and_evaluate(config, workdir)
    assert all(f"step {s}:" in str(error.value) for s in (2, 4, 6))
    assert snapshot(workdir) == before


def test_run_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, caplog):
    workdir = str(tmp_path / "new")
    held = lock.RunLock.acquire(workdir)
    with pytest.raises(lock.WorkdirBusyError, match=rf"pid {os.getpid()} on host"):
        lock.RunLock.acquire(workdir)
    with pytest.raises(lock.WorkdirBusyError):
        lock.check_not_busy(workdir)
    held.release()
    assert not os.path.exists(workdir)  # Created by the lock and left empty: removed.
    os.makedirs(workdir)
    info = {"pid": 2**22 + 12345, "host": "gone", "started": "yesterday"}
    (tmp_path / "new" / "run.lock").write_text(json.dumps(info))  # As kill -9 leaves it.
    lock.check_not_busy(workdir)
    held = lock.RunLock.acquire(workdir)
    assert json.loads((tmp_path / "new" / "run.lock").read_text())["pid"] == os.getpid()
    held.release()
    assert os.listdir(workdir) == []  # The workdir existed before: it stays.


def test_stop_requests_agree_across_processes(monkeypatch):
    stop = preemption.StopRequests(check_every_steps=4)
    with stop:
        assert not stop.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)  # Handled: the test process lives on.
        assert stop.should_stop(2) and stop.signal_name == "SIGTERM"
    # Two processes, the signal on the other one: both stop at the next agreement step.
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    gathered = []

    def allgather(flag):
        gathered.append(int(flag))
        return np.array([int(flag), 1])

    monkeypatch.setattr(preemption.multihost_utils, "process_allgather", allgather)
    stop = preemption.StopRequests(check_every_steps=4)
    assert [stop.should_stop(s) for s in range(1, 9)] == [False, False, False, True] + [True] * 4
    assert gathered == [0]  # At step 4 only: a collective every 4 steps, then the stop holds.


WORKER = """
import os, signal, sys, time
import jax
index, port, signame = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=index)
from ptjax.train import preemption
with preemption.StopRequests(check_every_steps=4) as stop:
    for step in range(1, 2000):
        time.sleep(0.01)
        if index == 1 and step == 6:
            os.kill(os.getpid(), getattr(signal, signame))
        if stop.should_stop(step):
            print("STOPPED", step, flush=True)
            break
jax.distributed.shutdown()
"""


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_two_processes_stop_at_the_same_step(tmp_path, signame):
    """A real 2-process jax.distributed run on the CPU; only process 1 gets the signal."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = dict(os.environ, XLA_FLAGS=xla_env.xla_flags(), JAX_PLATFORMS="cpu")
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), str(i), port, signame],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    stops = [re.search(r"STOPPED (\d+)", out) for out in outputs]
    assert all(stops), outputs
    steps = {int(m.group(1)) for m in stops}
    assert len(steps) == 1 and steps.pop() >= 6  # The same step on both processes.


def test_enormous_and_empty_lines_are_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(text_builders, "MAX_DOCUMENT_BYTES", 10)
    path = tmp_path / "a.txt"
    path.write_bytes(b"short\n" + b"x" * 11 + b"\n\n  \nexactly10b\r\n" + b"y" * 5000 + b"\nend")
    empty, too_long = [0], [0]
    docs = list(text_builders.read_documents([str(path)], "line", empty, too_long))
    assert docs == ["short", "exactly10b", "end"]
    assert (empty[0], too_long[0]) == (2, 2)
    big = tmp_path / "b.txt"
    big.write_bytes(b"z" * 11)
    too_long = [0]
    assert list(text_builders.read_documents([str(big)], "file", None, too_long)) == []
    assert too_long == [1]


def test_a_checkpoint_of_another_process_count_is_refused_by_name(six_steps, tmp_path):
    """Input-pipeline positions are per process: a run with another process count is told so
    (not that the files are damaged), and nothing is changed."""
    from ptjax.train.checkpoint import CheckpointMismatchError

    source, config = six_steps
    workdir = str(tmp_path / "copy")
    shutil.copytree(source, workdir)
    pattern = os.path.join(workdir, "checkpoints", "*", "*", "process_0", "data_iterator-*")
    saved = glob.glob(pattern)
    assert saved
    for path in saved:  # As process 0 of a 2-process run would have written them.
        os.rename(path, path.replace("process0of1", "process0of2"))
    before = snapshot(workdir)
    with pytest.raises(CheckpointMismatchError, match="another number of processes"):
        trainer.train_and_evaluate(config, workdir)
    assert snapshot(workdir) == before

    # Asked to, the run resumes its train state at step 6 with a new data order, recorded with
    # the next checkpoint's positions, so that a plain resume after it continues exactly: 6 -> 7
    # resharded, then 7 -> 8 plain, gives the losses of 6 -> 8 resharded in one go.
    config = config.copy_and_resolve_references()
    config.reshard_data_on_resume = True
    straight = str(tmp_path / "straight")
    shutil.copytree(workdir, straight)
    assert trainer.train_and_evaluate(config, straight)["step"] == 8
    assert trainer.train_and_evaluate(config, workdir, stop_after_steps=1)["step"] == 7
    seed = trainer.resharded_data_seed(config.seed, 6)
    layout = pathlib.Path(workdir, "checkpoints", "7", "data", "layout.json")
    assert json.loads(layout.read_text()) == {"process_count": 1, "data_seed": seed}
    kept = [path.replace("process0of1", "process0of2") for path in saved if "/6/" in path]
    assert kept and all(os.path.exists(path) for path in kept)  # Step 6's, as they were.
    config.reshard_data_on_resume = False
    assert trainer.train_and_evaluate(config, workdir)["step"] == 8
    assert read_losses(workdir)[8] == read_losses(straight)[8]
    assert read_losses(workdir)[7] == read_losses(straight)[7]
