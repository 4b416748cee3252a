"""Times ptjax against Hugging Face Transformers in PyTorch, in turns, in one run.

    python scripts/benchmark.py --model=gpt     # train step: 'bench' GPT, 8 x 256 tokens, ~4 min
    python scripts/benchmark.py --model=gpt --what=generate   # 8 prompts x 32, 128 new, greedy
    python scripts/benchmark.py --model=bert    # MLM train step vs BertForMaskedLM
    python scripts/benchmark.py --model=t5 --seq_len=128      # vs T5ForConditionalGeneration
    python scripts/benchmark.py --model=t5 --what=generate    # encoder-decoder greedy decoding
    python scripts/benchmark.py --devices=8 --mode=mesh --fsdp=2 --tensor=2 --baseline=none
    python scripts/benchmark.py --dtype=bfloat16   # bf16 compute, float32 parameters, both sides

T5 train steps take rows of --seq_len input and --seq_len target tokens (one example per row,
no padding); their rates count target tokens, each carrying its share of the encoder, as
`ptjax.models.t5.flops_per_token` does. T5 decoding encodes --prompt_len input tokens per row and
decodes --max_new_tokens; its rate is new tokens/s.

--what=train times the full train step (forward, backward, AdamW); --what=generate one greedy
decode of --per_device_batch_size prompts of --prompt_len tokens with --max_new_tokens new ones,
KV cache on both sides (ptjax.decoding vs `GPT2LMHeadModel.generate(use_cache=True)`), both
forced to produce every new token (no stop on EOS); its rate is new tokens/s.

Each side runs in its own worker process (so peak memory is per side), pinned to the same
--threads CPUs, on the same synthetic token batches. The parent times them in turns -- a block of
--steps steps of ptjax, then of the baseline, for --rounds rounds, the order reversed every other
round -- and reports medians; compilation and warm-up steps are timed apart. With
--env_tuning=both, both sides run once in the environment as given and once in ptjax's tuned one
(`ptjax.runtime.process_environment`), all four workers in the same turns. The last line of
output is one JSON object; its headline figures are for the tuned environment when it was run.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

from absl import app, flags

from ptjax.benchmarking import workers
from ptjax.benchmarking.options import DTYPES, MODELS, MODES, WHATS, Options
from ptjax.benchmarking.report import format_table
from ptjax.benchmarking.workers import serve

__all__ = ["Options", "format_table", "run_benchmark"]  # What tests/test_benchmark.py uses.

FLAGS = flags.FLAGS


def run_benchmark(opts: Options, log: Callable[[str], None] = print) -> dict[str, Any]:
    """ptjax.benchmarking's run, its workers this script again (--worker), as tests call it."""
    return workers.run_benchmark(opts, log, script=os.path.abspath(__file__))


def define_flags() -> None:
    """The command line; defined only when run as a script, so that tests can import it."""
    flags.DEFINE_enum(
        "model",
        "gpt",
        list(MODELS),
        "gpt: vs GPT2LMHeadModel; bert (MLM): BertForMaskedLM; t5: T5ForConditionalGeneration.",
    )
    flags.DEFINE_enum(
        "what",
        "train",
        list(WHATS),
        "train: forward, backward, AdamW update; generate: greedy decoding with the KV cache.",
    )
    flags.DEFINE_string(
        "size", "", "ptjax size name of --model's SIZES ('': gpt 'bench', bert 'mini')."
    )
    flags.DEFINE_integer(
        "per_device_batch_size", 8, "Rows per device (the baseline gets them all)."
    )
    flags.DEFINE_integer("seq_len", 256, "Tokens per row (--what=train).")
    flags.DEFINE_integer("prompt_len", 32, "Prompt tokens per row (--what=generate).")
    flags.DEFINE_integer("max_new_tokens", 128, "New tokens per row (--what=generate).")
    flags.DEFINE_integer("steps", 3, "Timed steps per block.")
    flags.DEFINE_integer("rounds", 6, "Blocks per side; the sides take turns.")
    flags.DEFINE_integer("warmup_steps", 2, "Untimed steps after the first (compiling) one.")
    flags.DEFINE_integer("threads", 0, "CPUs for each side (0: all this process may use).")
    flags.DEFINE_enum(
        "baseline", "hf", ["hf", "none"], "hf: transformers' model of the same shape."
    )
    flags.DEFINE_enum("hf_attention", "eager", ["eager", "sdpa"], "The baseline's attention.")
    flags.DEFINE_enum("env_tuning", "both", ["both", "on", "off"], "Process environment(s) to run.")
    flags.DEFINE_integer("seed", 0, "Seed of parameters, batches and dropout.")
    flags.DEFINE_enum(
        "mode", "pmap", list(MODES), "ptjax's parallel wrapper (config key parallelism.mode)."
    )
    flags.DEFINE_integer("fsdp", 1, "--mode=mesh: the fsdp axis (data takes the rest).")
    flags.DEFINE_integer("tensor", 1, "--mode=mesh: the tensor axis.")
    flags.DEFINE_integer(
        "devices", 0, "ptjax's CPU devices: 0 as the process has them, N: N fake host devices."
    )
    flags.DEFINE_enum(
        "dtype",
        "float32",
        list(DTYPES),
        "Compute dtype, parameters float32: ptjax's model.dtype, torch's CPU autocast.",
    )
    flags.DEFINE_integer(
        "steps_per_execution",
        1,
        "ptjax's train steps per call (config key steps_per_execution); divides --steps.",
    )
    flags.DEFINE_enum(
        "attention",
        "auto",
        ["auto", "xla", "splash", "cudnn"],
        "ptjax's attention kernel (config key model.attention).",
    )
    flags.DEFINE_float(
        "attention_dropout",
        -1.0,
        "ptjax's attention-probability dropout (model.attention_dropout_rate; -1: the model's "
        "dropout). Fused kernels serve training steps only at 0.",
    )
    flags.DEFINE_string("worker", None, "Internal: run as the worker of one side.")
    flags.DEFINE_string("worker_options", None, "Internal: the worker's options as JSON.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.worker:
        serve(FLAGS.worker, Options(**json.loads(FLAGS.worker_options)))
        return
    opts = Options(
        model=FLAGS.model,
        what=FLAGS.what,
        size=FLAGS.size,
        per_device_batch_size=FLAGS.per_device_batch_size,
        seq_len=FLAGS.seq_len,
        prompt_len=FLAGS.prompt_len,
        max_new_tokens=FLAGS.max_new_tokens,
        steps=FLAGS.steps,
        rounds=FLAGS.rounds,
        warmup_steps=FLAGS.warmup_steps,
        threads=FLAGS.threads,
        baseline=FLAGS.baseline,
        hf_attention=FLAGS.hf_attention,
        env_tuning=FLAGS.env_tuning,
        seed=FLAGS.seed,
        mode=FLAGS.mode,
        fsdp=FLAGS.fsdp,
        tensor=FLAGS.tensor,
        devices=FLAGS.devices,
        dtype=FLAGS.dtype,
        steps_per_execution=FLAGS.steps_per_execution,
        attention=FLAGS.attention,
        attention_dropout=FLAGS.attention_dropout,
    )
    try:
        opts.check()
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    result = run_benchmark(opts, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_table(result))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
