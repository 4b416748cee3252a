"""Trains a ptjax SentencePiece tokenizer (pad 0, eos 1, unk 2, bos 3, byte fallback) on a corpus.

  python scripts/train_tokenizer.py --dataset=ptjax_bible --output=/tmp/bible_8k.model \
      --vocab_size=8000 --data_dir=/tmp/tfds
  python scripts/train_tokenizer.py --dataset=text_files --files='notes/*.txt' \
      --output=/tmp/notes_4k.model --vocab_size=4000 --data_dir=/tmp/tfds
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

from absl import app, flags

from ptjax import config as config_lib
from ptjax.data import corpora, tokenizer

_DATASET = flags.DEFINE_string(
    "dataset", "ptjax_bible", "'ptjax_bible', 'text_files' or a prepared TFDS catalogue name."
)
_FILES = flags.DEFINE_string("files", "", "For --dataset=text_files: comma-separated paths/globs.")
_DOCUMENT_PER = flags.DEFINE_enum(
    "document_per", "line", ["line", "file"], "For text_files: a document per line or per file."
)
_TEXT_KEY = flags.DEFINE_string("text_key", "text", "Text feature of a TFDS catalogue dataset.")
_SPLIT = flags.DEFINE_string("split", "train", "Split whose documents train the tokenizer.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets")),
    "TFDS data directory (local builders are prepared here).",
)
_OUTPUT = flags.DEFINE_string("output", None, "Path of the .model file to write (must not exist).")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 8000, "Vocabulary size, special ids included.")
_MODEL_TYPE = flags.DEFINE_enum("model_type", "unigram", ["unigram", "bpe"], "SentencePiece model.")
_MAX_SENTENCES = flags.DEFINE_integer("max_sentences", 200_000, "Documents read at most.")

flags.mark_flag_as_required("output")


def main(argv: Sequence[str]) -> None:
    """Reads the corpus, trains the tokenizer, prints its size and a sample encoding."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    dataset = config_lib.base_config().dataset
    dataset.name = _DATASET.value
    dataset.train_files = _FILES.value
    dataset.document_per = _DOCUMENT_PER.value
    dataset.text_key = _TEXT_KEY.value
    texts = corpora.iterate_texts(
        dataset, _SPLIT.value, data_dir=_DATA_DIR.value, max_texts=_MAX_SENTENCES.value
    )
    sample = next(texts, None)
    if sample is None:
        raise ValueError(f"Split {_SPLIT.value!r} of dataset {_DATASET.value!r} is empty.")
    tok = tokenizer.train_tokenizer(
        itertools.chain([sample], texts),
        _OUTPUT.value,
        vocab_size=_VOCAB_SIZE.value,
        model_type=_MODEL_TYPE.value,
        max_sentences=_MAX_SENTENCES.value,
    )
    sample = sample[:80]
    ids = tok.encode(sample)
    print(f"Wrote {tok.path}: vocab_size={tok.vocab_size}")
    print(f"Sample: {sample!r}\n  -> {len(ids)} ids {ids}\n  -> {tok.decode(ids)!r}")


if __name__ == "__main__":
    app.run(main)
