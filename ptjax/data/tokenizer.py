"""SentencePiece tokenizer: loading, encoding, and training one from in-memory texts.

Every tokenizer ptjax trains has the same special ids (pad=0, eos=1, unk=2, bos=3) and byte
fallback, so any text round-trips. Other sentencepiece models load too: `Tokenizer` reads the
special ids from the model itself (`pad_id()`, `eos_id()`, `unk_id()`, `bos_id()`), so T5's
`spiece.model` has pad 0, eos 1, unk 2 and no bos (bos_id -1), and Llama 2's `tokenizer.model`
unk 0, bos 1, eos 2. ptjax needs an eos, and a pad id that encode never emits (its pipelines
give padding weight 0 by its id); a model without a pad piece pads with the `pad_token` that a
`tokenizer_config.json` next to it names (never the eos), else, with byte fallback, with its
unk id: byte fallback spells every character the pieces lack in byte pieces, so encode never
emits unk. That file's `add_bos_token` / `add_eos_token` change nothing here: encode adds no
special tokens, ptjax's pipelines do.

A `tokenizer_class` of LlamaTokenizer in that file switches encode to transformers 5's rule for
Llama, which differs from sentencepiece's own on texts that start with whitespace: sentencepiece
puts its dummy prefix '\u2581' before every text, transformers' Metaspace before a text only
when it does not start with ' ' or '\u2581' (and never with `add_prefix_space: false`; `legacy`
changes nothing when special tokens are not read from the text). So ' hi' is
['\u2581', '\u2581hi'] in sentencepiece and ['\u2581hi'] in transformers, and decodes as 'hi'.

A run's tokenizer is either a sentencepiece model (`tokenizer/spm.model`) or a Hugging Face
tokenizer imported by `ptjax.interop` (`tokenizer/tokenizer.json`); `load_tokenizer` and
`tokenizer_file` pick by the files, and code reads the special ids from the tokenizer object.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import sentencepiece as spm

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
BOS_ID = 3
TOKENIZER_CONFIG = "tokenizer_config.json"  # A Hugging Face tokenizer's settings, if any.
_SPACE = "\u2581"  # SentencePiece's whitespace symbol.


def _is_remote(path: str) -> bool:
    return "://" in path


def _read_bytes(path: str) -> bytes:
    """Reads a local file, or a remote one (gs://...) through tf.io.gfile."""
    if _is_remote(path):
        from ptjax.data.tf_setup import import_tf

        tf = import_tf()
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"Tokenizer model file {path!r} does not exist.")
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Tokenizer model file {path!r} does not exist.")
    with open(path, "rb") as f:
        return f.read()


def _read_config(model_path: str) -> tuple[str, dict[str, Any]]:
    """(path, settings) of the tokenizer_config.json next to a model; {} when there is none."""
    path = os.path.join(os.path.dirname(model_path), TOKENIZER_CONFIG)
    try:
        data = _read_bytes(path)
    except FileNotFoundError:
        return path, {}
    try:
        config = json.loads(data)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    return path, config if isinstance(config, dict) else {}


def _token(value: Any) -> str | None:
    """A special token of a tokenizer config: a string or {'content': ...}; None if neither."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _starts_with_space(text: str | bytes) -> bool:
    if isinstance(text, bytes):
        return text.startswith((b" ", _SPACE.encode("utf-8")))
    return text.startswith((" ", _SPACE))


def _with_dummy_prefix(proto: Any, on: bool) -> spm.SentencePieceProcessor:
    """The model of `proto` (a ModelProto) with its dummy prefix switched on or off."""
    proto = type(proto).FromString(proto.SerializeToString())  # A copy, changed.
    proto.normalizer_spec.add_dummy_prefix = on
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(proto.SerializeToString())
    return sp


class Tokenizer:
    """A SentencePiece model with its own special ids (ptjax's: pad 0, eos 1, unk 2, bos 3)."""

    def __init__(self, path: str):
        self._path = os.fspath(path)
        proto = _read_bytes(self._path)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(proto)
        except (RuntimeError, OSError) as e:
            raise ValueError(
                f"Tokenizer model file {self._path!r} is not a valid SentencePiece model: {e}"
            ) from e
        self._config_path, config = _read_config(self._path)
        from ptjax.interop.hf_tokenizers import LLAMA_TOKENIZER_CLASSES  # Beside HFTokenizer's.

        llama = config.get("tokenizer_class") in LLAMA_TOKENIZER_CLASSES
        self._bos_documents = (
            llama
            and config.get("add_bos_token", True) is not False
            and self._sp.bos_id() >= 0
            and self._sp.bos_id() != self._sp.eos_id()
        )
        model = None  # The parsed ModelProto, when needed.
        if self._sp.pad_id() < 0 or llama:
            from sentencepiece import sentencepiece_model_pb2  # protobuf; only needed here.

            model = sentencepiece_model_pb2.ModelProto.FromString(proto)
        self._pad_id, self._eos_id = self._pad_and_eos(config, model)
        # Per text, the model that encodes it: [0] for a text that starts with whitespace, [1]
        # for others; and the model that decodes. All sentencepiece's own, but for a Llama.
        self._encoders = (self._sp, self._sp)
        self._decoder = self._sp
        if llama:
            has_prefix = model.normalizer_spec.add_dummy_prefix
            without = _with_dummy_prefix(model, False) if has_prefix else self._sp
            if config.get("add_prefix_space", True) is False:
                self._encoders, self._decoder = (without, without), without
            else:
                with_prefix = self._sp if has_prefix else _with_dummy_prefix(model, True)
                self._encoders, self._decoder = (without, with_prefix), with_prefix
        self._num_threads = min(os.cpu_count() or 1, 16)

    def _pad_and_eos(self, config: dict[str, Any], model: Any) -> tuple[int, int]:
        """(pad, eos) ids: the model's, with a pad chosen when it has none (module docstring);
        `model` is its ModelProto, given when it has no pad piece."""
        eos = self._sp.eos_id()
        if eos < 0:
            raise ValueError(
                f"Tokenizer model file {self._path!r} has no eos piece (eos_id -1), and ptjax's "
                "pipelines end every text with one. Train it with scripts/train_tokenizer.py."
            )
        if self._sp.pad_id() >= 0:
            return self._sp.pad_id(), eos
        token = _token(config.get("pad_token"))
        if token is not None:
            token_id = self._sp.piece_to_id(token)
            if self._sp.id_to_piece(token_id) != token:
                raise ValueError(
                    f"{self._config_path} names pad_token={token!r}, which is not a piece of "
                    f"the sentencepiece model {self._path!r}."
                )
            if token_id != eos:
                return token_id, eos
            logging.warning(
                "%s names the eos %r as pad_token; ptjax pads with an id encode never emits "
                "(padding is dropped from the loss by its id), so it is not used.",
                self._config_path,
                token,
            )
        if model.trainer_spec.byte_fallback:
            return self._sp.unk_id(), eos  # Never emitted: byte pieces spell what is missing.
        raise ValueError(
            f"Tokenizer model file {self._path!r} has no pad piece and no byte fallback, and "
            f"ptjax needs a pad id that encode never emits; name one as 'pad_token' in "
            f"{self._config_path}."
        )

    @property
    def path(self) -> str:
        return self._path

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size()

    @property
    def pad_id(self) -> int:
        """The model's pad piece; without one, a piece encode never emits (module docstring)."""
        return self._pad_id

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()  # -1 for a model without one (T5's spiece.model).

    @property
    def bos_documents(self) -> bool:
        """Whether the model reads documents as [bos] text [eos] (a Llama's tokenizer_config.json
        with add_bos_token, its default) rather than as [eos] text (ptjax's own, GPT-2's)."""
        return self._bos_documents

    def piece_to_id(self, piece: str) -> int:
        """Id of a vocabulary piece (e.g. '[MASK]'); unknown pieces give unk_id."""
        return self._sp.piece_to_id(piece)

    def id_to_piece(self, token_id: int) -> str:
        """The vocabulary piece of an id; word-initial pieces start with '\u2581'."""
        return self._sp.id_to_piece(int(token_id))

    def _encoder(self, text: str | bytes) -> spm.SentencePieceProcessor:
        return self._encoders[0 if _starts_with_space(text) else 1]

    def encode(self, text: str | bytes) -> list[int]:
        """Token ids of one text, without eos/bos."""
        return self._encoder(text).encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str | bytes]) -> list[list[int]]:
        """Token ids of many texts, encoded by SentencePiece's own thread pool."""
        texts = list(texts)
        ids = self._encoders[1].encode(texts, out_type=int, num_threads=self._num_threads)
        if self._encoders[0] is not self._encoders[1]:  # A Llama: texts after whitespace again.
            spaced = [i for i, text in enumerate(texts) if _starts_with_space(text)]
            again = self._encoders[0].encode([texts[i] for i in spaced], out_type=int)
            for i, row in zip(spaced, again, strict=True):
                ids[i] = row
        return ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of one text and, per token, its (start, end) character span in `text`.

        Spans are Python str indices into the original text (not bytes, not the normalised
        text), so `text[spans[i][0]:spans[j][1]]` is the text of tokens i..j. The word-boundary
        whitespace a piece carries ('▁the' from ' the') is left out of its span unless the piece
        is only whitespace; every byte-fallback piece of a multi-byte character spans that whole
        character; the empty dummy-prefix piece has an empty span.
        """
        from sentencepiece import sentencepiece_pb2  # protobuf; only needed here.

        proto = sentencepiece_pb2.SentencePieceText()
        proto.ParseFromString(self._encoder(text).encode(text, out_type="serialized_proto"))
        pieces = proto.pieces
        ids = [piece.id for piece in pieces]
        begins = np.fromiter((piece.begin for piece in pieces), np.int64, len(ids))  # Bytes of
        ends = np.fromiter((piece.end for piece in pieces), np.int64, len(ids))  # the text.
        data = text.encode("utf-8")
        if len(data) != len(text):  # Not ASCII: bytes to characters.
            # Byte offset where each character starts (no UTF-8 continuation byte), then the end.
            raw = np.frombuffer(data, np.uint8)
            char_starts = np.append(np.flatnonzero((raw & 0xC0) != 0x80), len(data))
            begins = np.searchsorted(char_starts, begins, "right") - 1  # Round down to a char.
            ends = np.searchsorted(char_starts, ends, "left")  # Round up to a character's end.
        spans = list(zip(begins.tolist(), ends.tolist(), strict=True))
        # SentencePiece gives the first bytes of a byte-fallback character empty spans and the
        # last one the whole character; give each byte piece the character's span.
        for i in range(len(ids) - 2, -1, -1):
            start, end = spans[i]
            if (
                start == end
                and spans[i + 1][0] == start
                and self._sp.is_byte(ids[i])
                and self._sp.is_byte(ids[i + 1])
            ):
                spans[i] = spans[i + 1]
        for i, (start, end) in enumerate(spans):
            piece_text = text[start:end]
            stripped = piece_text.strip()
            if stripped and len(stripped) != len(piece_text):  # Leave out the whitespace a
                new_start = start + piece_text.index(stripped)  # piece carries by its word.
                spans[i] = (new_start, new_start + len(stripped))
        return ids, spans

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids; pad ids are dropped."""
        return self._decoder.decode([int(i) for i in ids if int(i) != self._pad_id])

    def __repr__(self) -> str:
        return f"Tokenizer(path={self._path!r}, vocab_size={self.vocab_size})"


SPM_FILE = "spm.model"
HF_FILE = "tokenizer.json"


def tokenizer_file(directory: str) -> str:
    """The tokenizer a run directory's `tokenizer/` holds: spm.model (sentencepiece), else
    tokenizer.json (a Hugging Face import); spm.model when it holds neither yet."""
    spm_path = os.path.join(directory, SPM_FILE)
    hf_path = os.path.join(directory, HF_FILE)
    if not os.path.exists(spm_path) and os.path.exists(hf_path):
        return hf_path
    return spm_path


def load_tokenizer(path: str) -> Tokenizer:
    """The tokenizer at `path`: a Hugging Face tokenizer.json, else a sentencepiece model."""
    if os.fspath(path).endswith(".json"):
        from ptjax.interop.hf_tokenizers import HFTokenizer

        return HFTokenizer(path)  # Same interface as Tokenizer.
    return Tokenizer(path)


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int) -> None:
    """Raises ValueError when a model's vocabulary size differs from the tokenizer's."""
    if tokenizer.vocab_size != model_vocab_size:
        raise ValueError(
            f"Model vocab_size={model_vocab_size} does not match tokenizer vocab_size="
            f"{tokenizer.vocab_size} (tokenizer {tokenizer.path!r}). Set model.vocab_size=0 to "
            "take the tokenizer's size, or use the tokenizer the model was trained with."
        )


def _sentences(texts: Iterable[str], max_sentences: int, counter: list[int]) -> Iterator[str]:
    """Non-empty lines of the first `max_sentences` texts; counts them in counter[0]."""
    for text in itertools.islice(texts, max_sentences):
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        for line in text.splitlines():
            if line.strip():
                counter[0] += 1
                yield line


def train_tokenizer(
    texts: Iterable[str],
    output_path: str,
    *,
    vocab_size: int,
    model_type: str = "unigram",
    max_sentences: int = 200_000,
    control_symbols: Sequence[str] = (),
) -> Tokenizer:
    """Trains a SentencePiece model on the first `max_sentences` texts and writes `output_path`.

    Texts are split into lines (SentencePiece's "sentences"). Normalisation is the identity with
    whitespace kept and byte fallback on, so decode(encode(text)) == text for any text. Training
    is deterministic: the same texts give the same bytes. `control_symbols` (e.g. BERT's
    ('[CLS]', '[SEP]', '[MASK]')) get the ids right after bos, 4, 5, ..., in order; encode never
    emits them, even for the same characters in a text. The file is written under a temporary
    name and then linked into place; an existing `output_path` is never overwritten.
    """
    output_path = os.fspath(output_path)
    if _is_remote(output_path):
        raise ValueError(f"train_tokenizer writes local files only; got {output_path!r}.")
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type={model_type!r}; expected 'unigram' or 'bpe'.")
    control_symbols = list(control_symbols)
    if vocab_size <= BOS_ID + 1 + len(control_symbols) + 256:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: 4 special ids + {len(control_symbols)} control "
            f"symbols + 256 byte pieces need > {BOS_ID + 1 + len(control_symbols) + 256}."
        )
    if max_sentences <= 0:
        raise ValueError(f"max_sentences={max_sentences} must be positive.")
    if os.path.exists(output_path):
        raise FileExistsError(
            f"Tokenizer file {output_path!r} already exists; delete it or choose another --output."
        )
    counter = [0]
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sentences(texts, max_sentences, counter),
            model_writer=writer,
            vocab_size=vocab_size,
            model_type=model_type,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            byte_fallback=True,
            control_symbols=control_symbols,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            input_sentence_size=0,  # Use every sentence given (we cap them), so no random sampling.
            max_sentence_length=16384,  # Bytes; longer lines are skipped by SentencePiece.
            num_threads=min(os.cpu_count() or 1, 16),
            minloglevel=2,
        )
    except RuntimeError as e:
        if counter[0] == 0:
            raise ValueError(
                f"No non-empty text to train tokenizer {output_path!r} on; check the dataset."
            ) from e
        raise ValueError(
            f"Training tokenizer {output_path!r} (vocab_size={vocab_size}, {model_type}) on "
            f"{counter[0]} lines failed; lower vocab_size or give more text. SentencePiece: {e}"
        ) from e
    directory = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(
        prefix=os.path.basename(output_path) + ".", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(writer.getvalue())
        # os.link fails if output_path appeared meanwhile, so nothing is ever overwritten.
        try:
            os.link(tmp_path, output_path)
        except FileExistsError:
            raise
        except OSError:  # File systems without hard links: check, then rename.
            if os.path.exists(output_path):
                raise FileExistsError(output_path) from None
            os.rename(tmp_path, output_path)
    except FileExistsError as e:
        raise FileExistsError(f"Tokenizer file {output_path!r} appeared while training.") from e
    finally:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
    return Tokenizer(output_path)
