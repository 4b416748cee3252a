"""Converts Hugging Face BERT / GPT-2 / T5 model directories to ptjax workdirs and back.

    python scripts/convert_checkpoint.py --hf_dir=downloads/gpt2 --workdir=runs/gpt2
    python scripts/generate.py --workdir=runs/gpt2 --prompt="Hello, I'm a language model,"
    python scripts/convert_checkpoint.py --export --workdir=runs/spam --hf_dir=exports/spam

Import writes config.json, the tokenizer and checkpoints/0 into a new --workdir, which
`--config.init_checkpoint`, scripts/evaluate.py and scripts/generate.py read; --export writes
config.json, model.safetensors and the tokenizer of the run's latest checkpoint (or of
--workdir=a step directory) into a new --hf_dir, for `from_pretrained`. Neither writes into a
non-empty directory.
"""

from __future__ import annotations

import sys

from absl import app, flags

from ptjax import runtime

FLAGS = flags.FLAGS
flags.DEFINE_string("hf_dir", None, "A Hugging Face model directory.", required=True)
flags.DEFINE_string("workdir", None, "A ptjax run directory (or a step directory).", required=True)
flags.DEFINE_bool("export", False, "Write --workdir's checkpoint into --hf_dir instead.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    with runtime.start_up():
        runtime.initialize()
        from ptjax.interop import export_hf, import_hf

    try:
        if FLAGS.export:
            arch = export_hf(FLAGS.workdir, FLAGS.hf_dir)
            print(f"wrote {arch} to {FLAGS.hf_dir}")
        else:
            model = import_hf(FLAGS.hf_dir, FLAGS.workdir)  # Logs what it did besides copies.
            print(
                f"wrote {model.architecture} as ptjax {model.family} (task {model.task}) to "
                f"{FLAGS.workdir}"
            )
    except (FileNotFoundError, FileExistsError, ImportError, ValueError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
