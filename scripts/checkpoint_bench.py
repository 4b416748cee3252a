"""Checkpoint save and restore of a run's train state: time and extra host memory.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python scripts/checkpoint_bench.py \
        --config=configs/gpt_small.py --config.parallelism.mode=mesh \
        --config.parallelism.fsdp=8 --dir=/tmp/ckpt_bench

Run it as each process of a multi-host run (PTJAX_COORDINATOR, PTJAX_NUM_PROCESSES and
PTJAX_PROCESS_ID, as scripts/train.py) to measure what each process holds and writes.

Builds the configured model's fresh train state (parameters and optimizer moments) on the
devices as the trainer places it, saves it through the trainer's Checkpointer, waits for the
asynchronous write, then restores it into the run's placement and checks every array is
bit-identical. A thread samples the process's resident memory (VmRSS) every 2 ms; "extra"
is the peak above what the process held just before. On CPU devices the device buffers are
host memory too: the saved state is in the baseline, and a restore's extra includes the
restored state as placed on the devices (restored_on_devices_mb: once per device that holds
a copy). Prints a table and one JSON line.
"""

import functools
import json
import os
import shutil
import threading
import time

from absl import app, flags
from ml_collections import config_flags

from ptjax import runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:ARG]).")
flags.DEFINE_string("dir", None, "Empty or new directory for the checkpoint (removed after).")
flags.DEFINE_integer("vocab_size", 50257, "Vocabulary size of the model (no tokenizer is read).")
flags.mark_flags_as_required(["config", "dir"])


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("No VmRSS in /proc/self/status.")


class PeakRss:
    """The peak resident memory while the block runs, sampled by a thread."""

    def __enter__(self):
        self.base = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.extra = self.peak - self.base


class NoData:
    """Stands in for the input pipeline's iterator (its position is a few bytes anyway)."""

    def save(self, directory):
        os.makedirs(directory, exist_ok=True)

    def restore(self, directory):
        pass


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # Checked before the processes join (a barrier): none has written there yet.
    if os.path.exists(FLAGS.dir) and os.listdir(FLAGS.dir):
        raise app.UsageError(f"--dir={FLAGS.dir} is not empty.")
    with runtime.start_up():
        runtime.initialize()
        import jax
        import numpy as np
        from jax.experimental import multihost_utils

        from ptjax import models
        from ptjax.train import optim, parallel
        from ptjax.train.checkpoint import Checkpointer
        from ptjax.train.state import init_params, init_state

    config = FLAGS.config
    model, _ = models.build(config, FLAGS.vocab_size)
    par = parallel.create(config.parallelism)
    init = functools.partial(init_state, config, model)
    abstract_params = jax.eval_shape(
        functools.partial(init_params, config, model), jax.random.PRNGKey(0)
    )
    tx, _ = optim.make_optimizer(config.optimizer, config.total_steps, abstract_params)
    abstract = jax.eval_shape(functools.partial(init, tx))
    state = par.place(par.init(functools.partial(init, tx), abstract))
    jax.block_until_ready(state)
    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    writes = sum(  # The shards this process writes: one copy of each, wherever it is held.
        shard.data.nbytes
        for x in jax.tree.leaves(par.global_view(state))
        for shard in x.addressable_shards
        if shard.replica_id == 0
    )

    directory = os.path.join(FLAGS.dir, "checkpoints")
    checkpointer = Checkpointer(directory, keep=2)
    saves = []
    for step in (1, 2):  # The first save compiles what it runs on the devices; the second not.
        with PeakRss() as save_rss:
            start = time.perf_counter()
            checkpointer.save(step, par.global_view(state), NoData())
            returned = time.perf_counter() - start
            checkpointer.wait()
            done = time.perf_counter() - start
        saves.append((returned, done, save_rss.extra))
    checkpointer.close()

    reader = Checkpointer(directory, keep=1)
    with PeakRss() as restore_rss:
        start = time.perf_counter()
        _, restored = reader.restore_latest(abstract, NoData(), par.shardings)
        restored = par.place(restored)
        jax.block_until_ready(restored)
        restore_s = time.perf_counter() - start
    reader.close()
    same = all(  # This process's shards, device by device.
        np.array_equal(np.asarray(a.data), np.asarray(b.data))
        for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True)
        for a, b in zip(x.addressable_shards, y.addressable_shards, strict=True)
    )
    multihost_utils.sync_global_devices("checkpoint_bench done")
    if jax.process_index() == 0:
        shutil.rmtree(directory)
    on_devices = sum(
        shard.data.nbytes for x in jax.tree.leaves(restored) for shard in x.addressable_shards
    )
    mesh = par.mesh.devices.shape if par.mesh is not None else ("pmap", jax.local_device_count())
    result = {
        "model": f"{config.model.family}/{config.model.size}",
        "mesh": list(mesh),
        "process": f"{jax.process_index()} of {jax.process_count()}",
        "state_mb": round(nbytes / 2**20, 1),
        "process_writes_mb": round(writes / 2**20, 1),
        "first_save_returns_s": round(saves[0][0], 3),
        "first_save_done_s": round(saves[0][1], 3),
        "save_returns_s": round(saves[1][0], 3),
        "save_done_s": round(saves[1][1], 3),
        "save_extra_rss_mb": round(max(extra for _, _, extra in saves) / 2**20, 1),
        "restore_s": round(restore_s, 3),
        "restore_extra_rss_mb": round(restore_rss.extra / 2**20, 1),
        "restored_on_devices_mb": round(on_devices / 2**20, 1),
        "bit_identical": same,
    }
    for key, value in result.items():
        print(f"{key:>22}  {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
