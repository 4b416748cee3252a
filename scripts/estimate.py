"""Pre-flight: per-device memory and FLOPs of a run's train step, without allocating the model.

    python scripts/estimate.py --config=configs/gpt.py:size=large --config.seq_len=1024 \
        --config.model.dtype=bfloat16 --memory_gb=16

Takes the same --config flags as scripts/train.py; compiles the train step ahead of time on
this machine's backend (see ptjax/train/estimate.py for what that means for another chip),
prints a table and one JSON line. With --memory_gb it also bisects for the largest
per-device batch whose step fits in that much memory.
"""

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from ptjax import config as config_lib
from ptjax import run as run_lib
from ptjax import runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py[:ARG]).", lock_config=True
)
flags.DEFINE_float("memory_gb", 0.0, "Per-device memory (GiB) to fit the batch into; 0: skip.")
flags.DEFINE_integer("max_batch", 4096, "Largest per-device batch tried by --memory_gb.")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    with runtime.start_up():
        runtime.initialize()
        from ptjax.train import estimate  # After runtime.initialize(), as scripts/train.py.

    config = FLAGS.config
    try:
        run_lib.validate(config)
    except config_lib.ConfigError as e:
        sys.exit(f"ConfigError: {e}")
    result = estimate.estimate(config)
    gib = estimate.format_bytes
    print(
        f"{config.model.family}/{config.model.size}, task {config.task}, dtype "
        f"{config.model.dtype}, remat {config.model.remat}, "
        f"{'scanned' if config.model.scan_layers else 'unrolled'} layers, "
        f"{config.num_microbatches} microbatch(es), per-device batch "
        f"{result.per_device_batch_size} x {config.seq_len}"
    )
    rows = [
        ("parameters", f"{result.num_params:,}"),
        ("trained (optimizer state for these)", f"{result.trained_params:,}"),
        ("arguments (state + batch)", gib(result.argument_bytes)),
        ("outputs (new state + metrics)", gib(result.output_bytes)),
        ("temporaries", gib(result.temp_bytes)),
        ("donated (aliased, counted once)", gib(result.alias_bytes)),
        ("peak per device", gib(result.peak_bytes)),
        (
            "FLOPs per step (XLA" + (", one layer per stack)" if config.model.scan_layers else ")"),
            f"{result.flops_per_step:.4g}",
        ),
        ("FLOPs per step (model, analytical)", f"{result.model_flops_per_step:.4g}"),
        ("trace + lower + compile (s)", f"{result.compile_seconds:.1f}"),
    ]
    record = {"config": config.model.family + "/" + config.model.size, **result.as_dict()}
    if FLAGS.memory_gb > 0:
        budget = FLAGS.memory_gb * estimate.GIB
        best, seen = estimate.largest_batch(config, budget, FLAGS.max_batch)
        rows.append((f"largest per-device batch in {FLAGS.memory_gb:g} GiB", str(best)))
        record["memory_gb"] = FLAGS.memory_gb
        record["largest_per_device_batch"] = best
        record["tried"] = {b: e.peak_bytes for b, e in sorted(seen.items())}
    width = max(len(name) for name, _ in rows)
    print("| " + "figure".ljust(width) + " | value |")
    print("| " + "-" * width + " | ---: |")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    print(json.dumps(record))


if __name__ == "__main__":
    try:
        config_lib.check_override_flags(sys.argv)
    except config_lib.ConfigError as e:
        sys.exit(f"ConfigError: {e}")
    app.run(main)
