"""The benchmark's processes: one worker per side and environment, driven over stdin/stdout
with one JSON object per line, and the parent that starts them and times them in turns.

A worker is the benchmark script run again with --worker and --worker_options, so that each
side has a process of its own (its own peak memory, its own environment)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from ptjax import runtime
from ptjax.benchmarking.hf_side import HFBertSide, HFGenerateSide, HFSide, HFT5Side
from ptjax.benchmarking.options import MATMUL_SIZE, REWARM_STEPS, Options
from ptjax.benchmarking.ptjax_side import PtjaxGenerateSide, PtjaxSide
from ptjax.benchmarking.report import summarise
from ptjax.benchmarking.timing import peak_device_mib, time_block


def _pin_threads(threads: int) -> list[int]:
    """Restricts this process to its first `threads` allowed CPUs (XLA sizes its pool by them)."""
    cpus = sorted(os.sched_getaffinity(0))
    if threads:
        cpus = cpus[:threads]
        os.sched_setaffinity(0, cpus)
    return cpus


SIDES = {
    ("train", "ptjax"): PtjaxSide,
    ("train", "hf"): HFSide,
    ("train", "hf-bert"): HFBertSide,
    ("train", "hf-t5"): HFT5Side,
    ("generate", "ptjax"): PtjaxGenerateSide,
    ("generate", "hf"): HFGenerateSide,
    ("generate", "hf-t5"): HFGenerateSide,
}


def serve(side_name: str, opts: Options) -> None:
    """The worker's loop: build, compile and warm up the side, then run blocks on request."""
    import resource

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # Library prints go to stderr; stdout carries only the protocol.

    def send(message: dict) -> None:
        proto.write(json.dumps(message) + "\n")

    cpus = _pin_threads(opts.threads)
    try:
        baseline = side_name
        if side_name == "hf" and opts.model != "gpt":
            baseline = f"hf-{opts.model}"
        side_class = SIDES[(opts.what, baseline)]
        setup = None if side_name == "ptjax" else json.loads(sys.stdin.readline())
        with runtime.start_up():  # Both sides import their libraries with the GC paused.
            side = side_class(opts) if setup is None else side_class(opts, len(cpus), setup)
        per_call = getattr(side, "steps_per_call", 1)  # ptjax: --steps_per_execution.
        start = time.perf_counter()
        side.step(0)
        side.finish()
        first = time.perf_counter() - start
        start = time.perf_counter()
        warmup_calls = -(-opts.warmup_steps // per_call)  # At least --warmup_steps steps.
        for i in range(warmup_calls):
            side.step(per_call * (1 + i))
        side.finish()
        warmup = time.perf_counter() - start
        info = dict(side.info, cpus=len(cpus), first_step_seconds=first, warmup_seconds=warmup)
        info["matmul_flops_per_second"] = side.matmul_flops(tries=6)
        info["matmul_size"] = getattr(side, "matmul_size", MATMUL_SIZE)
        send(info)
        done = per_call * (1 + warmup_calls)
        for line in sys.stdin:
            request = json.loads(line)
            if request["op"] == "exit":
                break
            for _ in range(REWARM_STEPS):
                side.step(done)
                done += per_call
            side.finish()
            result = time_block(side.step, side.finish, request["steps"], done, per_call)
            done += request["steps"]
            # Measured again after every block: the machine's rate is the best seen in the run.
            result["matmul_flops_per_second"] = side.matmul_flops(tries=2)
            send(dict(result, loss=side.last_loss))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.
        send({"peak_rss_mib": peak, "peak_device_mib": peak_device_mib(side_name)})
    except Exception as e:  # Reported by the parent with the worker's stderr.
        send({"error": f"{type(e).__name__}: {e}"})
        raise


class _Worker:
    """A worker process of one side in one environment: `script` run with --worker."""

    def __init__(
        self, side: str, setting: str, opts: Options, env: dict[str, str], script: str
    ) -> None:
        self.side, self.setting = side, setting
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 -- closed in close().
        args = [sys.executable, script, f"--worker={side}"]
        args.append(f"--worker_options={json.dumps(dataclasses.asdict(opts))}")
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env
        )

    def send(self, message: dict) -> None:
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict:
        line = self.proc.stdout.readline()
        message = json.loads(line) if line.strip() else {"error": "the worker exited"}
        if "error" in message:
            self.proc.wait()
            self.log.seek(0)
            tail = self.log.read()[-3000:]
            raise RuntimeError(
                f"{self.side} worker ({self.setting} environment): {message['error']}\n{tail}"
            )
        return message

    def request(self, message: dict) -> dict:
        self.send(message)
        return self.receive()

    def close(self) -> dict:
        self.send({"op": "exit"})
        message = self.receive()
        self.proc.wait()
        self.log.close()
        return message


def _environment(setting: str, threads: int, workload: str = "train") -> dict[str, str]:
    """The workers' environment: as given ('off') or tuned ('on'); the same threads either way."""
    env = runtime.process_environment(tuned=setting == "on", workload=workload)
    env[runtime.NO_TUNING_VAR] = "1"  # The workers never re-execute themselves.
    env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_benchmark(
    opts: Options, log: Callable[[str], None] = print, *, script: str
) -> dict[str, Any]:
    """Runs the workers in turns and returns the summary (what the JSON line holds).

    `script` is the benchmark script whose --worker mode calls `serve`; each worker runs it.
    """
    opts.check()
    threads = opts.threads or len(os.sched_getaffinity(0))
    opts = dataclasses.replace(opts, threads=threads)
    settings = {"both": ["off", "on"], "on": ["on"], "off": ["off"]}[opts.env_tuning]
    sides = ["ptjax"] + (["hf"] if opts.baseline == "hf" else [])
    workers: dict[tuple[str, str], _Worker] = {}
    infos: dict[tuple[str, str], dict] = {}
    blocks: dict[tuple[str, str], list[dict]] = {}
    try:
        # Started one at a time, so that compile and warm-up times are not shared.
        for setting in settings:
            workload = runtime.workload_for(opts.what, opts.dtype)
            env = _environment(setting, threads, workload)
            for side in sides:
                key = (setting, side)
                log(f"starting {side} worker ({setting} environment tuning)")
                side_env = dict(env)
                if side == "ptjax" and opts.devices:  # N host devices: pmap/mesh over them.
                    name = "--xla_force_host_platform_device_count"
                    given = [f for f in env.get("XLA_FLAGS", "").split() if f.split("=")[0] != name]
                    side_env["XLA_FLAGS"] = " ".join([*given, f"{name}={opts.devices}"])
                workers[key] = _Worker(side, setting, opts, side_env, script)
                if side == "hf":
                    ptjax_info = infos[(setting, "ptjax")]
                    setup = {k: ptjax_info.get(k) for k in ("rows", "model_config", "optimizer")}
                    workers[key].send(setup)
                infos[key] = workers[key].receive()
                blocks[key] = []
        order = list(workers)
        for r in range(opts.rounds):
            for key in order if r % 2 == 0 else order[::-1]:
                time.sleep(0.2)  # Lets the other side's idle threads stop spinning.
                result = workers[key].request({"op": "run", "steps": opts.steps})
                blocks[key].append(result)
            log(f"round {r + 1}/{opts.rounds} done")
        for key, worker in list(workers.items()):
            infos[key].update(worker.close())
            del workers[key]
    finally:
        for worker in workers.values():
            worker.proc.kill()
    return summarise(opts, settings, sides, infos, blocks)
