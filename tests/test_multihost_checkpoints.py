"""Multi-host checkpoints of a state of a few hundred MB: 2 real processes x 4 fake CPU
devices on an FSDP mesh (1, 8, 1), evals, the best checkpoint and checkpoints on (samples on
a mesh: test_multihost).

- scripts/checkpoint_bench.py in each process: a save holds well under the state's size of
  extra host memory (each process writes only its own shards; nothing is gathered), and the
  restore gives every shard back bit for bit.
- The trainer: SIGTERM to both processes saves and exits 0; kill -9 of both while Orbax is
  writing the next (asynchronous) save leaves the complete steps as they were; the rerun resumes
  from the last complete step and repeats the killed run's losses exactly.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import test_multihost as mh
import xla_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 4 blocks 768 wide, the tiny tokenizer's 8000 pieces: 34.6M parameters, with AdamW's moments a
# 415 MB float32 state; about 2 s a step on the 2-core test machine.
BIG = {"model.num_layers": 4, "model.d_model": 768, "model.num_heads": 12, "model.d_ff": 3072}
# The trainer's runs: 2 such blocks, a 250 MB state (Orbax's asynchronous write still takes
# long enough for the kill to land in it), about 1 s a step.
RUN_SHAPE = {**BIG, "model.num_layers": 2}
STEP_LINE = re.compile(r"step (\d+)/\d+  loss (\S+)")


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_env(index, port):
    return dict(
        os.environ,
        XLA_FLAGS=xla_env.xla_flags(devices=4),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tests"), ROOT]),
        PTJAX_COORDINATOR=f"127.0.0.1:{port}",
        PTJAX_NUM_PROCESSES="2",
        PTJAX_PROCESS_ID=str(index),
        PTJAX_NO_ENV_TUNING="1",
    )


def test_a_save_holds_well_under_the_state_of_extra_host_memory(tmp_path, tokenizer_file):
    """Each process's peak extra resident memory while it saves stays under half the state
    (its own shards are half; a gather of the whole state, as before, took more than all of
    it), and each restores its shards bit for bit."""
    port = _port()
    flags = [f"--config.model.{k.split('.')[1]}={v}" for k, v in BIG.items()]
    command = [
        sys.executable,
        os.path.join(ROOT, "scripts", "checkpoint_bench.py"),
        "--config=" + os.path.join(ROOT, "configs", "gpt_tiny.py"),
        "--config.parallelism.mode=mesh",
        "--config.parallelism.fsdp=8",
        "--vocab_size=8000",
        f"--dir={tmp_path / 'bench'}",
        *flags,
    ]
    processes = [
        subprocess.Popen(
            command, env=_cluster_env(i, port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=400)[0].decode() for p in processes]
    results = []
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-4000:]
        results.append(json.loads(output.strip().splitlines()[-1]))
    print(json.dumps(results, indent=1))
    for result in results:
        assert result["mesh"] == [1, 8, 1] and result["bit_identical"], result
        assert 350 < result["state_mb"] < 500, result
        # Each process holds and writes its half of the state's shards.
        assert abs(result["process_writes_mb"] - result["state_mb"] / 2) < 0.05 * result["state_mb"]
        assert result["save_extra_rss_mb"] < 0.5 * result["state_mb"], result
    assert not os.path.exists(tmp_path / "bench" / "checkpoints")


class BigRun:
    """The trainer on the RUN_SHAPE model in 2 processes x 4 devices (test_multihost's
    worker)."""

    def __init__(self, workdir, data_dir, tokenizer_file):
        changes = {
            **RUN_SHAPE,
            "total_steps": 8,
            "checkpoint_every_steps": 2,
            "eval_every_steps": 4,
            "sample_every_steps": 0,
            "keep_checkpoints": 2,
            "parallelism.fsdp": 8,
        }
        self.run = mh.Run(workdir, 2, "mesh", data_dir, tokenizer_file, changes=changes)

    def log(self, process=0):
        with open(self.run.logs[process]) as f:
            return f.read()

    def losses(self):
        """{step: loss} as process 0 logged them."""
        return {int(m.group(1)): float(m.group(2)) for m in STEP_LINE.finditer(self.log())}

    def wait_until(self, predicate, timeout=300):
        deadline = time.monotonic() + timeout
        while not predicate():
            codes = [p.poll() for p in self.run.processes]
            assert None in codes, f"exited early ({codes}):\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"timed out:\n{self.log()[-3000:]}"
            time.sleep(0.005)

    def signal(self, signum, timeout=300):
        for p in self.run.processes:
            p.send_signal(signum)
        return [p.wait(timeout=timeout) for p in self.run.processes]


def complete_steps(workdir):
    directory = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def partial_saves(workdir):
    directory = os.path.join(workdir, "checkpoints")
    return [n for n in os.listdir(directory) if ".orbax-checkpoint-tmp" in n]


def test_sigterm_and_kill_9_during_an_async_save(tmp_path, data_dir, tokenizer_file):
    workdir = str(tmp_path / "big")
    # 1. SIGTERM to both processes after step 3: they agree on a step, save it, exit 0.
    first = BigRun(workdir, data_dir, tokenizer_file)
    first.wait_until(lambda: 3 in first.losses())
    assert first.signal(signal.SIGTERM) == [0, 0], first.log()[-3000:]
    stopped = int(re.search(r"Preempted by SIGTERM at step (\d+)", first.log()).group(1))
    assert complete_steps(workdir)[-1] == stopped and not partial_saves(workdir)
    state = os.path.join(workdir, "checkpoints", str(stopped), "state")
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(state))

    # 2. Rerun; kill -9 both as soon as Orbax writes the next save into its temporary directory.
    second = BigRun(workdir, data_dir, tokenizer_file)
    second.wait_until(lambda: "Resuming from" in second.log())
    assert f"Resuming from {os.path.join(workdir, 'checkpoints', str(stopped))}\n" in second.log()
    second.wait_until(lambda: partial_saves(workdir))
    assert second.signal(signal.SIGKILL) == [-signal.SIGKILL] * 2
    assert partial_saves(workdir), "the kill did not land inside the asynchronous save"
    assert complete_steps(workdir)[-1] == stopped
    killed_losses = second.losses()

    # 3. Rerun: resumes from the last complete step, repeats the killed run's steps exactly,
    # finishes, and leaves no temporary directory.
    third = BigRun(workdir, data_dir, tokenizer_file)
    third.run.finish(timeout=600)
    assert f"Resuming from {os.path.join(workdir, 'checkpoints', str(stopped))}\n" in third.log()
    assert complete_steps(workdir)[-1] == 8 and not partial_saves(workdir)
    again = third.losses()
    repeated = sorted(set(killed_losses) & set(again))
    assert repeated and min(repeated) == stopped + 1, (killed_losses, again)
    assert [again[s] for s in repeated] == [killed_losses[s] for s in repeated]
