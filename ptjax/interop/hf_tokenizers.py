"""Hugging Face tokenizers (BERT's WordPiece, GPT-2's byte-level BPE, any `tokenizer.json`)
behind ptjax's tokenizer interface, through the `tokenizers` library.

`HFTokenizer(path)` reads a `tokenizer.json` and, next to it, `tokenizer_config.json` /
`special_tokens_map.json` for the special tokens (the first wins where both name one). It offers
what the pipelines use of `ptjax.data.tokenizer.Tokenizer`: `vocab_size`, `pad_id`/`eos_id`/
`unk_id`/`bos_id`, `piece_to_id`, `id_to_piece`, `encode`, `encode_batch`,
`encode_with_offsets`, `decode`. As with ptjax's sentencepiece models, `encode` adds no special
tokens and never produces one from text ("[MASK]" in a text is tokenised as text).

ptjax's pipelines own padding, truncation, special tokens and windows, so the tokenizer.json's
own settings for them (a sentence-transformers export pads and cuts every text to 128 tokens)
are switched off at load: its padding, its truncation and its post-processor (special tokens,
ByteLevel/RoBERTa offset trimming). `HFTokenizer.switched_off` names what was; the file itself is
never changed, so an export copies it back as it was.

Special ids are the tokenizer's own. BERT has no eos/bos: they are [SEP]/[CLS]. GPT-2 has no
pad token, and ptjax needs one the tokenizer never emits (the LM pipeline gives padding weight 0
and segment 0 by its id, so pad = eos would drop every end-of-document target): a byte-level BPE
without a pad token pads with the token of a byte that never occurs in UTF-8 text (0xFF, 'ÿ',
or the next such byte the vocabulary has). It is never written into the exported tokenizer.
Llama 2 has no pad token either (`pad_token: null`), but a BPE with byte fallback and all 256
byte pieces (<0x00> ... <0xFF>) spells in bytes every character its vocabulary lacks, so it
never emits unk: such a BPE without a pad token pads with the unk id (as
`ptjax.data.tokenizer.Tokenizer` does for Llama 2's tokenizer.model).

A `tokenizer_class` of LlamaTokenizer(Fast) in tokenizer_config.json, over a BPE that is not
byte-level (transformers reads a Llama 3 style one as it is), encodes and decodes as
transformers 5 does: its LlamaTokenizer takes only the vocabulary and merges of a
tokenizer.json and sets its own pipeline (no normalizer; a Metaspace pre-tokenizer that prepends
'\u2581' to a text unless it starts with ' ' or '\u2581', or never with `add_prefix_space:
false`; a decoder that strips that one space again). So does this class, in memory. Llama 2's
published tokenizer.json instead prepends '\u2581' to every text in its normalizer, as
sentencepiece does: read as is, ' hi' would be ['\u2581', '\u2581hi'] where transformers gives
['\u2581hi']. The BPE model is read as the file has it (transformers rebuilds it with byte
fallback on and no unk token: the same ids where the file has byte fallback and all 256 byte
pieces, as Llama 2's has).

T5's `spiece.model` is a sentencepiece model and goes through `ptjax.data.tokenizer.Tokenizer`,
as does a Llama's `tokenizer.model` imported without a tokenizer.json.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from typing import Any

# tokenizer_class values for which encoding follows transformers' LlamaTokenizer (a
# sentencepiece model's and a non-byte-level tokenizer.json's alike).
LLAMA_TOKENIZER_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast")
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
SPIECE = "spiece.model"
LLAMA_SPM = "tokenizer.model"  # Llama 2's sentencepiece model (LlamaTokenizer's vocab_file).
# Files of a Hugging Face tokenizer that an import copies (and an export copies back).
FILES = (
    TOKENIZER_JSON,
    TOKENIZER_CONFIG,
    SPECIAL_TOKENS_MAP,
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    SPIECE,
)
# Role -> config keys in order of preference, then well-known token strings to fall back on.
_ROLES = {
    "pad": (("pad_token",), ("[PAD]", "<pad>")),
    "eos": (("eos_token", "sep_token"), ("</s>", "<|endoftext|>", "<|end_of_text|>", "[SEP]")),
    "unk": (("unk_token",), ("[UNK]", "<unk>", "<|endoftext|>")),
    "bos": (("bos_token", "cls_token"), ("<s>", "<|endoftext|>", "<|begin_of_text|>", "[CLS]")),
}
_NEVER_IN_UTF8 = (0xFF, 0xFE, 0xFD, 0xFC, 0xFB, 0xFA, 0xF9, 0xF8, 0xF7, 0xF6, 0xF5, 0xC1, 0xC0)
_SPACE = "\u2581"  # SentencePiece's whitespace symbol, which Llama's Metaspace writes.


def _byte_char(b: int) -> str:
    """GPT-2's printable stand-in for byte `b` (its `bytes_to_unicode`)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    if b in printable:
        return chr(b)
    return chr(256 + [x for x in range(256) if x not in printable].index(b))


def token_content(value: Any) -> str | None:
    """A special token from a tokenizer config: a string or {'content': ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
    return data if isinstance(data, dict) else {}


def _special_config(directory: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(settings, key -> file it came from) of tokenizer_config.json over special_tokens_map.json
    (older exports have only the latter) in `directory`."""
    config: dict[str, Any] = {}
    source: dict[str, str] = {}
    for name in (SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG):  # The later file wins.
        data = _read_json(os.path.join(directory, name))
        config.update(data)
        source.update(dict.fromkeys(data, name))
    return config, source


def _is_byte_level(description: dict[str, Any]) -> bool:
    pre = description.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return any(p.get("type") == "ByteLevel" for p in parts if isinstance(p, dict))


def _mentions_byte_level(description: dict[str, Any]) -> bool:
    """Whether any part of a tokenizer.json but its vocabulary is ByteLevel: transformers 5 then
    reads it as it is, whatever tokenizer_class its config names."""
    parts = {k: v for k, v in description.items() if k not in ("model", "added_tokens")}
    return '"ByteLevel"' in json.dumps(parts)


def _follow_llama(tokenizer: Any, config: dict[str, Any]) -> None:
    """Sets `tokenizer`'s normalizer, pre-tokenizer and decoder as transformers 5's
    LlamaTokenizer.__init__ does for the settings of its tokenizer_config.json `config`."""
    from tokenizers import decoders, pre_tokenizers

    prefix = config.get("add_prefix_space") is not False  # None (unset) means True.
    scheme = ("always" if config.get("legacy") else "first") if prefix else "never"
    tokenizer.normalizer = None
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=_SPACE, prepend_scheme=scheme, split=False
    )
    steps = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    tokenizer.decoder = decoders.Sequence(steps)


# Post-processors that add special tokens (when asked to; ptjax never asks).
_ADDS_SPECIALS = ("TemplateProcessing", "BertProcessing", "RobertaProcessing")


def _describe(what: str, parts: list[str], settings: dict[str, Any], optional: tuple) -> str:
    """'what (part, part, ...)': `parts`, then the `optional` settings and a direction that
    are set to other than their defaults."""
    parts = parts + [f"{key} {settings[key]}" for key in optional if settings.get(key)]
    if settings.get("direction") not in (None, "Right"):
        parts.append(f"direction {settings['direction']}")
    return f"{what} ({', '.join(parts)})"


def _describe_padding(padding: dict[str, Any]) -> str:
    strategy = padding.get("strategy")
    if isinstance(strategy, dict):  # {"Fixed": 128}
        strategy = ", ".join(f"{kind} {value}" for kind, value in strategy.items())
    parts = [str(strategy), f"pad_id {padding.get('pad_id')}"]
    return _describe("padding", parts, padding, ("pad_to_multiple_of",))


def _describe_truncation(truncation: dict[str, Any]) -> str:
    parts = [f"max_length {truncation.get('max_length')}", str(truncation.get("strategy"))]
    return _describe("truncation", parts, truncation, ("stride",))


def _describe_post_processor(post: dict[str, Any]) -> str:
    kind = post.get("type")
    parts = post.get("processors", []) if kind == "Sequence" else [post]
    parts = [p for p in parts if isinstance(p, dict)]
    kinds = [str(p.get("type")) for p in parts]
    name = f"Sequence({', '.join(kinds)})" if kind == "Sequence" else str(kind)
    notes = []
    if any(k in _ADDS_SPECIALS for k in kinds):
        notes.append("its special tokens are added by ptjax's pipelines")
    if any(p.get("trim_offsets") for p in parts):
        notes.append("trim_offsets: encode_with_offsets trims spans itself")
    return f"post-processor {name}" + (f" ({'; '.join(notes)})" if notes else "")


def _template_start(post: dict[str, Any] | None) -> str | None:
    """The special token a post-processor's template puts before a single text, if any."""
    parts = (post or {}).get("processors", [post]) if post else []
    for part in parts:
        if isinstance(part, dict) and part.get("type") == "TemplateProcessing":
            first = (part.get("single") or [{}])[0]
            if "SpecialToken" in first:
                return first["SpecialToken"].get("id")
    return None


def _switch_off(tokenizer: Any, description: dict[str, Any]) -> tuple[str, ...]:
    """Switches off `tokenizer`'s padding, truncation and post-processor (`description` is its
    JSON); one line for each that was on."""
    lines = []
    if description.get("padding"):
        lines.append(_describe_padding(description["padding"]))
        tokenizer.no_padding()
    if description.get("truncation"):
        lines.append(_describe_truncation(description["truncation"]))
        tokenizer.no_truncation()
    if description.get("post_processor"):
        lines.append(_describe_post_processor(description["post_processor"]))
        tokenizer.post_processor = None  # Ids and offsets as the bare model gives them.
    return tuple(lines)


class HFTokenizer:
    """A `tokenizers` tokenizer (from a tokenizer.json) with ptjax's tokenizer interface."""

    def __init__(self, path: str):
        import tokenizers

        self._path = os.fspath(path)
        if not os.path.isfile(self._path):
            raise FileNotFoundError(f"Tokenizer file {self._path!r} does not exist.")
        try:
            self._tok = tokenizers.Tokenizer.from_file(self._path)
        except Exception as e:  # The Rust side raises plain Exceptions for malformed files.
            raise ValueError(f"{self._path!r} is not a valid tokenizer.json: {e}") from e
        self._tok.encode_special_tokens = True  # Text never becomes a special token.
        description = json.loads(self._tok.to_str())
        self._switched_off = _switch_off(self._tok, description)
        if self._switched_off:
            logging.info(
                "Tokenizer %s: switched off its %s (ptjax's pipelines own them).",
                self._path,
                "; ".join(self._switched_off),
            )
        config, self._config_source = _special_config(os.path.dirname(self._path))
        if (
            config.get("tokenizer_class") in LLAMA_TOKENIZER_CLASSES
            and (description.get("model") or {}).get("type") == "BPE"
            and not _mentions_byte_level(description)  # Llama 3 style: read as it is.
        ):
            _follow_llama(self._tok, config)
            logging.info("Tokenizer %s: encodes as transformers' LlamaTokenizer.", self._path)
        self._ids = {role: self._role_id(role, config) for role in _ROLES}
        if self._ids["pad"] is None:
            self._ids["pad"] = self._unused_id(description)
        if self._ids["eos"] is None:
            raise ValueError(
                f"Tokenizer {self._path!r} has no eos (or sep) token; name one as 'eos_token' in "
                f"{TOKENIZER_CONFIG}."
            )
        if self._ids["unk"] is None:
            self._ids["unk"] = -1
        if self._ids["bos"] is None:
            self._ids["bos"] = self._ids["eos"]
        starts = _template_start(description.get("post_processor"))
        added = config.get("add_bos_token")
        self._bos_documents = self._ids["bos"] != self._ids["eos"] and (
            bool(added) if added is not None else self._tok.token_to_id(starts or "") == self.bos_id
        )

    def _role_id(self, role: str, config: dict[str, Any]) -> int | None:
        keys, fallbacks = _ROLES[role]
        for key in keys:
            if key in config:
                token = token_content(config[key])
                if token is None:
                    continue  # Explicitly none (GPT-2's pad_token: null).
                token_id = self._tok.token_to_id(token)
                if token_id is None:
                    raise ValueError(
                        f"{self._config_source[key]} next to {self._path!r} names {key}="
                        f"{token!r}, which is not in the vocabulary."
                    )
                return token_id
        if any(key in config for key in keys):
            return None
        for token in fallbacks:
            if self._tok.token_to_id(token) is not None:
                return self._tok.token_to_id(token)
        return None

    def _unused_id(self, description: dict[str, Any]) -> int:
        """A pad id for a tokenizer without a pad token: one it never emits (module docstring)."""
        if _is_byte_level(description):
            for b in _NEVER_IN_UTF8:
                token_id = self._tok.token_to_id(_byte_char(b))
                if token_id is not None:
                    return token_id
        model = description.get("model") or {}
        if (
            model.get("type") == "BPE"
            and model.get("byte_fallback")
            and self._ids["unk"] is not None
            and all(self._tok.token_to_id(f"<0x{b:02X}>") is not None for b in range(256))
        ):
            return self._ids["unk"]  # Never emitted: byte pieces spell what the vocabulary lacks.
        raise ValueError(
            f"Tokenizer {self._path!r} has no pad token, and ptjax needs an id it never emits; "
            f"name one as 'pad_token' in {TOKENIZER_CONFIG}."
        )

    @property
    def path(self) -> str:
        return self._path

    @property
    def switched_off(self) -> tuple[str, ...]:
        """The tokenizer.json's own padding, truncation and post-processor settings that were
        switched off at load, one line each (empty when it had none)."""
        return self._switched_off

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return self._ids["pad"]

    @property
    def eos_id(self) -> int:
        return self._ids["eos"]

    @property
    def unk_id(self) -> int:
        return self._ids["unk"]

    @property
    def bos_id(self) -> int:
        return self._ids["bos"]

    @property
    def bos_documents(self) -> bool:
        """Whether the model reads documents as [bos] text [eos] (Llama's) rather than GPT-2's
        [eos] text: its post-processor (switched off) put the bos first, or its
        tokenizer_config.json says add_bos_token."""
        return self._bos_documents

    def piece_to_id(self, piece: str) -> int:
        """Id of a vocabulary token (e.g. '[MASK]'); unknown tokens give unk_id."""
        token_id = self._tok.token_to_id(piece)
        return self.unk_id if token_id is None else token_id

    def id_to_piece(self, token_id: int) -> str:
        return self._tok.id_to_token(int(token_id))

    @staticmethod
    def _text(text: str | bytes) -> str:
        return text.decode("utf-8") if isinstance(text, bytes) else text

    def encode(self, text: str | bytes) -> list[int]:
        """Token ids of one text, without special tokens."""
        return self._tok.encode(self._text(text), add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str | bytes]) -> list[list[int]]:
        batch = self._tok.encode_batch([self._text(t) for t in texts], add_special_tokens=False)
        return [e.ids for e in batch]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and their (start, end) character spans in `text` (Python str indices),
        without the whitespace a token carries unless it is only whitespace."""
        enc = self._tok.encode(text, add_special_tokens=False)
        spans = []
        for start, end in enc.offsets:
            stripped = text[start:end].strip()
            if stripped:
                start += text[start:end].index(stripped)
                end = start + len(stripped)
            spans.append((start, end))
        return enc.ids, spans

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids; pad and special tokens are dropped."""
        return self._tok.decode(
            [int(i) for i in ids if int(i) != self.pad_id], skip_special_tokens=True
        )

    def __repr__(self) -> str:
        return f"HFTokenizer(path={self._path!r}, vocab_size={self.vocab_size})"


def build(directory: str) -> Any:
    """A `tokenizers.Tokenizer` from an HF tokenizer's files, as transformers 5 builds it:
    tokenizer.json, else BERT's vocab.txt (WordPiece), else GPT-2's vocab.json + merges.txt;
    special tokens and settings from tokenizer_config.json and special_tokens_map.json."""
    import tokenizers
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    config, _ = _special_config(directory)
    path = os.path.join(directory, TOKENIZER_JSON)
    if os.path.exists(path):
        return tokenizers.Tokenizer.from_file(path)
    vocab_txt = os.path.join(directory, "vocab.txt")
    if os.path.exists(vocab_txt):
        unk = token_content(config.get("unk_token")) or "[UNK]"
        tok = tokenizers.Tokenizer(models.WordPiece.from_file(vocab_txt, unk_token=unk))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=config.get("tokenize_chinese_chars", True),
            strip_accents=config.get("strip_accents"),
            lowercase=config.get("do_lower_case", True),
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        specials = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
        defaults = ("[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]")
        names = [token_content(config.get(k)) or d for k, d in zip(specials, defaults, strict=True)]
        tok.add_special_tokens([n for n in names if tok.token_to_id(n) is not None])
        return tok
    vocab_json, merges = (
        os.path.join(directory, "vocab.json"),
        os.path.join(directory, "merges.txt"),
    )
    if os.path.exists(vocab_json) and os.path.exists(merges):
        bpe = models.BPE.from_file(vocab_json, merges, continuing_subword_prefix="", fuse_unk=False)
        tok = tokenizers.Tokenizer(bpe)
        prefix = bool(config.get("add_prefix_space", False))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix)
        tok.decoder = decoders.ByteLevel()
        eos = token_content(config.get("eos_token")) or "<|endoftext|>"
        if tok.token_to_id(eos) is not None:
            tok.add_special_tokens([eos])
        return tok
    raise FileNotFoundError(
        f"{directory!r} holds no Hugging Face tokenizer: expected {TOKENIZER_JSON}, vocab.txt "
        f"(WordPiece), vocab.json + merges.txt (byte-level BPE) or {SPIECE} (sentencepiece)."
    )


def copy_files(source: str, target: str) -> list[str]:
    """Copies the HF tokenizer files of `source` into the directory `target`; their names."""
    copied = []
    for name in FILES:
        path = os.path.join(source, name)
        if os.path.isfile(path):
            shutil.copyfile(path, os.path.join(target, name))
            copied.append(name)
    return copied
