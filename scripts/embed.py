"""Sentence embeddings of a BERT-style run: one vector per line of a text file, into a .npy file.

    python scripts/convert_checkpoint.py --hf_dir=downloads/all-MiniLM-L6-v2 --workdir=runs/minilm
    python scripts/embed.py --workdir=runs/minilm --input=texts.txt --output=vectors.npy

--pooling and --normalize default to the sentence-transformers files an import carries (else
mean pooling, unnormalised); see ptjax.text_embedder. The output is [lines, dimension] float32,
one row per line of --input in order (empty lines included); an existing file is never replaced.
"""

import os
import sys
import tempfile

from absl import app, flags, logging

from ptjax import runtime

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A ptjax BERT run directory (e.g. an imported model).")
flags.DEFINE_string("input", None, "A UTF-8 text file, one text per line.")
flags.DEFINE_string("output", None, "The .npy file to write (must not exist).")
flags.DEFINE_string("checkpoint", "latest", "'latest', 'best', a step or a step directory.")
flags.DEFINE_list("pooling", [], "cls, max, mean or mean_sqrt_len (several: concatenated).")
flags.DEFINE_enum("normalize", "auto", ["auto", "true", "false"], "L2-normalise the vectors.")
flags.DEFINE_integer("max_len", 0, "Tokens per text, [CLS] and [SEP] included (0: default).")
flags.DEFINE_integer("batch_size", 32, "Texts per batch.")
flags.mark_flags_as_required(["workdir", "input", "output"])


def read_texts(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        texts = [line.rstrip("\n") for line in f]
    if not texts:
        raise ValueError(f"--input={path!r} is empty: give one text per line.")
    return texts


def write_npy(path: str, array) -> None:
    """Writes `array` to `path` through a temporary sibling; never replaces an existing file."""
    import numpy as np

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".embed.", suffix=".npy", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.link(tmp, path)  # Fails if `path` appeared meanwhile.
    finally:
        os.unlink(tmp)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if os.path.exists(FLAGS.output):  # Said before JAX and TensorFlow start.
        logging.error("FileExistsError: --output=%r exists; choose a new file.", FLAGS.output)
        sys.exit(2)
    with runtime.start_up():
        runtime.initialize(runtime.run_workload(FLAGS.workdir))
        from ptjax.text_embedder import TextEmbedder
        from ptjax.train import trainer

    normalize = None if FLAGS.normalize == "auto" else FLAGS.normalize == "true"
    try:
        texts = read_texts(FLAGS.input)
        embedder = TextEmbedder.from_workdir(
            FLAGS.workdir,
            FLAGS.checkpoint,
            pooling=FLAGS.pooling or None,
            normalize=normalize,
            max_len=FLAGS.max_len,
            batch_size=FLAGS.batch_size,
        )
        vectors = embedder(texts)
        write_npy(FLAGS.output, vectors)
    except (*trainer.USER_ERRORS, FileExistsError, ValueError) as e:
        logging.error("%s: %s", type(e).__name__, e)
        sys.exit(2)
    logging.info("Wrote %s vectors to %s", "x".join(map(str, vectors.shape)), FLAGS.output)
    print(f"{FLAGS.output}: {vectors.shape[0]} x {vectors.shape[1]} float32")


if __name__ == "__main__":
    app.run(main)
