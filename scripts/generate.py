"""Generates text from a trained run.

    python scripts/generate.py --workdir=runs/demo --prompt="In the beginning" --temperature=0
    python scripts/generate.py --workdir=runs/demo --prompts_file=prompts.txt \
        --temperature=0.8 --top_p=0.9 --output=completions.jsonl

Greedy (--temperature=0) prints one completion per prompt, one per line, on stdout.
"""

import json
import sys

from absl import app, flags, logging

from ptjax import config as config_lib
from ptjax import runtime

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A ptjax run directory (config.json, tokenizer, checkpoints).")
flags.DEFINE_string("checkpoint", None, "A checkpoint step directory; default: the latest.")
flags.DEFINE_multi_string("prompt", [], "A prompt (repeatable).")
flags.DEFINE_string("prompts_file", None, "A UTF-8 file with one prompt per line.")
flags.DEFINE_string("output", None, "Write {prompt, completion} JSON lines here instead.")
flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt.")
flags.DEFINE_float("temperature", 0.0, "0 is greedy; > 0 samples.")
flags.DEFINE_integer("top_k", 0, "Sample from the k likeliest tokens (0: all).")
flags.DEFINE_float("top_p", 1.0, "Sample from the smallest set with this probability mass.")
flags.DEFINE_integer("num_beams", 1, "Beam search width (with temperature 0).")
flags.DEFINE_float("length_penalty", 1.0, "Beam score = log p / length ** length_penalty.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("batch_size", 64, "Prompts decoded at once (split over local devices).")
flags.mark_flag_as_required("workdir")


def read_prompts() -> list[str]:
    prompts = list(FLAGS.prompt)
    if FLAGS.prompts_file:
        with open(FLAGS.prompts_file, encoding="utf-8") as f:
            prompts += [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        raise app.UsageError("Give --prompt (repeatable) or --prompts_file.")
    return prompts


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    prompts = read_prompts()
    try:  # A directory that holds no run is named before JAX and TensorFlow start.
        config_lib.load_run_config(FLAGS.workdir)
    except (FileNotFoundError, ValueError) as e:
        logging.error("%s: %s", type(e).__name__, e)
        sys.exit(2)
    with runtime.start_up():
        runtime.initialize(workload="decode")  # XLA:CPU tuned for small per-token matmuls.
        from ptjax.run import Run
        from ptjax.train import trainer

    try:
        generator = Run.open(FLAGS.workdir).generator(FLAGS.checkpoint)
        completions = []
        for start in range(0, len(prompts), FLAGS.batch_size):
            completions += generator.generate(
                prompts[start : start + FLAGS.batch_size],
                max_new_tokens=FLAGS.max_new_tokens,
                temperature=FLAGS.temperature,
                top_k=FLAGS.top_k,
                top_p=FLAGS.top_p,
                num_beams=FLAGS.num_beams,
                length_penalty=FLAGS.length_penalty,
                seed=FLAGS.seed + start,
            )
    except (*trainer.USER_ERRORS, ValueError) as e:
        logging.error("%s: %s", type(e).__name__, e)
        sys.exit(2)
    if FLAGS.output:
        with open(FLAGS.output, "x", encoding="utf-8") as f:  # Never overwrite results.
            for prompt, completion in zip(prompts, completions, strict=True):
                f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
        logging.info("Wrote %d completions to %s", len(completions), FLAGS.output)
    else:
        for completion in completions:
            print(completion.replace("\n", " "))


if __name__ == "__main__":
    app.run(main)
