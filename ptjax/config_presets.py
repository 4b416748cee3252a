"""Helpers shared by the files in configs/: argument parsing and per-family presets."""

from __future__ import annotations

import ml_collections

from ptjax.config import ConfigError, base_config


def parse_arg(arg: str | None, **defaults: object) -> ml_collections.ConfigDict:
    """Parses 'key=value,key=value' (the part after ':' in --config=file.py:ARG).

    Values take the type of their default; an unknown key is an error naming it.
    """
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise ConfigError(
                f"Config argument {item!r} is not key=value with key in {sorted(defaults)}."
            )
        kind = type(defaults[key])
        if kind is bool:
            out[key] = value.lower() in ("1", "true", "yes")
        else:
            out[key] = kind(value)
    return out


def _preset(family: str, task: str, size: str, t: dict) -> ml_collections.ConfigDict:
    """base_config() with the family, task, size and a size's training defaults `t` (seq_len,
    per_device_batch_size, total_steps, learning_rate; warm-up: t's, else a tenth of the steps
    up to 10k with linear decay to 0)."""
    c = base_config()
    c.task = task
    c.model.family = family
    c.model.size = size
    c.seq_len = t["seq_len"]
    c.per_device_batch_size = t["per_device_batch_size"]
    c.total_steps = t["total_steps"]
    c.optimizer.learning_rate = t["learning_rate"]
    if "warmup_steps" in t:
        c.optimizer.warmup_steps = t["warmup_steps"]
    else:
        c.optimizer.warmup_steps = min(10_000, t["total_steps"] // 10)
        c.optimizer.schedule = "linear"
        c.optimizer.end_learning_rate_fraction = 0.0
    return c


# Per-size training defaults for GPT pretraining (GPT-2 paper / nanoGPT settings for the big
# ones, CPU-sized for 'tiny').
_GPT_TRAINING = {
    "tiny": dict(
        seq_len=128, per_device_batch_size=8, learning_rate=1e-3, warmup_steps=100, total_steps=1200
    ),
    "bench": dict(
        seq_len=256, per_device_batch_size=8, learning_rate=6e-4, warmup_steps=100, total_steps=2000
    ),
    "small": dict(
        seq_len=1024,
        per_device_batch_size=16,
        learning_rate=6e-4,
        warmup_steps=2000,
        total_steps=600_000,
    ),
    "medium": dict(
        seq_len=1024,
        per_device_batch_size=8,
        learning_rate=3e-4,
        warmup_steps=2000,
        total_steps=600_000,
    ),
    "large": dict(
        seq_len=1024,
        per_device_batch_size=4,
        learning_rate=2.5e-4,
        warmup_steps=2000,
        total_steps=600_000,
    ),
    "xl": dict(
        seq_len=1024,
        per_device_batch_size=2,
        learning_rate=2e-4,
        warmup_steps=2000,
        total_steps=600_000,
    ),
}


def gpt_config(size: str) -> ml_collections.ConfigDict:
    """Causal-LM pretraining of a GPT of the named size on the bundled corpus."""
    if size not in _GPT_TRAINING:
        raise ConfigError(f"GPT size {size!r} is not one of {sorted(_GPT_TRAINING)}.")
    t = _GPT_TRAINING[size]
    c = _preset("gpt", "causal_lm", size, t)
    c.sample_prompts = ("In the beginning", "Jesus said to them,", "")
    if size == "tiny":
        c.sample_every_steps = 200
        c.log_every_steps = 50
        c.eval_every_steps = 200
        c.checkpoint_every_steps = 200
    else:
        c.tokenizer.vocab_size = 32000
        c.log_every_steps = 100
        c.eval_every_steps = 2000
        c.checkpoint_every_steps = 2000
        c.sample_every_steps = 2000
    return c


# Per-size training defaults of Llama-style decoders: 'tiny' as GPT's; the published shapes
# with SmolLM's recipe (2k context, lr 3e-3 for 135m/360m; 1b: Llama 3's 3e-4), sized for one
# accelerator host.
_LLAMA_TRAINING = {
    "tiny": _GPT_TRAINING["tiny"],
    "135m": dict(
        seq_len=2048,
        per_device_batch_size=8,
        learning_rate=3e-3,
        warmup_steps=2000,
        total_steps=600_000,
    ),  # fmt: skip
    "360m": dict(
        seq_len=2048,
        per_device_batch_size=4,
        learning_rate=3e-3,
        warmup_steps=2000,
        total_steps=600_000,
    ),  # fmt: skip
    "1b": dict(
        seq_len=2048,
        per_device_batch_size=2,
        learning_rate=3e-4,
        warmup_steps=2000,
        total_steps=600_000,
    ),  # fmt: skip
}


def llama_config(size: str) -> ml_collections.ConfigDict:
    """Causal-LM pretraining of a Llama-style decoder of the named size on the bundled corpus
    (ptjax.models.llama); evals and samples as GPT's."""
    if size not in _LLAMA_TRAINING:
        raise ConfigError(f"Llama size {size!r} is not one of {sorted(_LLAMA_TRAINING)}.")
    c = gpt_config("tiny" if size == "tiny" else "small")  # Logging and sampling cadence.
    t = _LLAMA_TRAINING[size]
    base = _preset("llama", "causal_lm", size, t)
    for key in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
        base[key] = c[key]
    base.sample_every_steps = c.sample_every_steps
    base.sample_prompts = c.sample_prompts
    base.tokenizer.vocab_size = c.tokenizer.vocab_size
    base.optimizer.weight_decay = 0.1 if size != "tiny" else base.optimizer.weight_decay
    return base


# Per-size masked-LM pretraining defaults (BERT paper: 1M steps of 256 x 512 tokens for
# base/large, lr 1e-4; Turc et al. 2019 for the miniatures; CPU-sized for 'tiny' and 'mini').
_BERT_TRAINING = {
    "tiny": dict(seq_len=128, per_device_batch_size=16, learning_rate=1e-3, total_steps=2000),
    "mini": dict(seq_len=128, per_device_batch_size=16, learning_rate=5e-4, total_steps=4000),
    "small": dict(seq_len=128, per_device_batch_size=32, learning_rate=3e-4, total_steps=100_000),
    "base": dict(seq_len=512, per_device_batch_size=32, learning_rate=1e-4, total_steps=1_000_000),
    "large": dict(seq_len=512, per_device_batch_size=32, learning_rate=1e-4, total_steps=1_000_000),
}


def bert_config(size: str) -> ml_collections.ConfigDict:
    """Masked-LM pretraining of a BERT of the named size on the bundled corpus."""
    if size not in _BERT_TRAINING:
        raise ConfigError(f"BERT size {size!r} is not one of {sorted(_BERT_TRAINING)}.")
    t = _BERT_TRAINING[size]
    c = _preset("bert", "masked_lm", size, t)
    c.optimizer.b2 = 0.999  # BERT's Adam.
    c.optimizer.eps = 1e-6
    c.optimizer.weight_decay = 0.01
    if size in ("tiny", "mini"):
        c.log_every_steps = 50
        c.eval_every_steps = 500
        c.checkpoint_every_steps = 500
    else:
        c.tokenizer.vocab_size = 30522 if size in ("base", "large") else 16000
        c.log_every_steps = 100
        c.eval_every_steps = 10_000
        c.checkpoint_every_steps = 10_000
    return c


def bert_classification_config(size: str, dataset: str = "ptjax_spam") -> ml_collections.ConfigDict:
    """Fine-tuning a BERT of the named size for sequence classification (BERT paper's recipe:
    a few epochs at 2e-5..5e-5 on big models, more and faster on the miniatures)."""
    c = bert_config(size)
    c.task = "classification"
    c.dataset.name = dataset
    c.dataset.eval_split = "validation"
    c.seq_len = 256
    c.per_device_batch_size = 16
    small = size in ("tiny", "mini")
    # About 6 epochs of the bundled spam/ham train split (4,021 e-mails) for the miniatures,
    # which need more and faster steps than the 3 epochs at 3e-5 of BERT-base.
    c.total_steps = 1600 if small else 800
    c.optimizer.learning_rate = 3e-4 if small else 3e-5
    c.optimizer.warmup_steps = c.total_steps // 10
    c.model.dropout_rate = 0.1
    c.log_every_steps = 50
    c.eval_every_steps = 200
    c.checkpoint_every_steps = 200
    c.best_metric = "macro_f1"
    c.best_metric_mode = "max"
    return c


def bert_qa_config(size: str, dataset: str = "ptjax_qa_demo") -> ml_collections.ConfigDict:
    """Fine-tuning a BERT of the named size for SQuAD-style extractive QA (BERT paper: 2-3
    epochs at 3e-5 and 384 tokens with stride 128 on SQuAD; CPU-sized for the bundled demo)."""
    c = bert_config(size)
    c.task = "extractive_qa"
    c.dataset.name = dataset
    c.dataset.eval_split = "validation"
    if dataset == "squad":
        c.seq_len, c.qa.doc_stride, c.qa.max_query_len = 384, 128, 64
        c.per_device_batch_size = 32
        c.total_steps = 5500  # About 2 epochs of SQuAD v1.1 at a global batch of 32.
    else:
        c.seq_len, c.qa.doc_stride, c.qa.max_query_len = 128, 64, 24
        c.per_device_batch_size = 16
        c.total_steps = 2000
    c.optimizer.learning_rate = 1e-4 if size in ("tiny", "mini") else 3e-5
    c.optimizer.warmup_steps = c.total_steps // 10
    c.model.dropout_rate = 0.1
    c.eval_every_steps = c.checkpoint_every_steps = 500
    c.best_metric = "f1"
    c.best_metric_mode = "max"
    return c


# T5 training defaults (T5 paper: 2^19 steps of 128 x 512 tokens at Adafactor 1e-2 for
# pretraining; here AdamW, CPU-sized for 'tiny').
_T5_TRAINING = {
    "tiny": dict(seq_len=128, per_device_batch_size=16, learning_rate=1e-3, total_steps=2000),
}
_T5_BIG = dict(seq_len=512, per_device_batch_size=16, learning_rate=1e-3, total_steps=524_288)


# Text-to-text fine-tuning sets of t5_config: dataset name, (encoder, decoder) lengths of the
# published sizes (tiny/mini: 128 each). The eval metric follows the dataset (BLEU, ROUGE, EM/F1).
T5_SEQ2SEQ_DATA = {
    "en_es": ("ptjax_en_es", 512, 512),  # Bundled verse pairs, BLEU.
    "cnn_dailymail": ("cnn_dailymail", 512, 128),  # ROUGE; TFDS, prepared by the user.
    "xsum": ("xsum", 512, 64),  # ROUGE; TFDS, prepared by the user.
    "squad": ("squad", 512, 32),  # Generative QA, EM/F1; TFDS, prepared by the user.
    "qa_demo": ("ptjax_qa_demo", 512, 32),  # Generative QA on the bundled demo questions.
}


def t5_config(
    size: str, task: str = "span_corruption", data: str = "en_es"
) -> ml_collections.ConfigDict:
    """A T5 of the named size: span-corruption pretraining on the bundled corpus, or
    task='seq2seq' fine-tuning on `data` (T5_SEQ2SEQ_DATA; default the bundled en->es pairs)."""
    from ptjax.models import t5

    if size not in t5.SIZES:
        raise ConfigError(f"T5 size {size!r} is not one of {sorted(t5.SIZES)}.")
    if task not in ("span_corruption", "seq2seq"):
        raise ConfigError(f"T5 task {task!r} is not 'span_corruption' or 'seq2seq'.")
    if data not in T5_SEQ2SEQ_DATA:
        raise ConfigError(f"T5 data {data!r} is not one of {sorted(T5_SEQ2SEQ_DATA)}.")
    t = _T5_TRAINING.get(size, _T5_BIG)
    c = _preset("t5", task, size, t)
    c.optimizer.weight_decay = 0.01
    if size != "tiny":
        c.tokenizer.vocab_size = 32000
    if task == "seq2seq":
        small = size in ("tiny", "mini")
        c.dataset.name, inputs_len, targets_len = T5_SEQ2SEQ_DATA[data]
        c.seq_len = 128 if small else inputs_len
        c.seq2seq.target_len = 128 if small else targets_len
        c.total_steps = 3000 if size == "tiny" else 50_000
        c.optimizer.learning_rate = 1e-3 if size == "tiny" else 1e-4
        c.optimizer.warmup_steps = c.total_steps // 10
    c.log_every_steps = 50 if size == "tiny" else 100
    c.eval_every_steps = c.checkpoint_every_steps = 500 if size == "tiny" else 5000
    return c
