"""Classify texts with a fine-tuned ptjax run, as `AutoModelForSequenceClassification` users do.

    from ptjax import TextClassifier
    classify = TextClassifier.from_workdir("runs/spam", checkpoint="best")
    classify(["Win a FREE cruise!!! Reply now", "Minutes of Tuesday's meeting attached"])
    # [{'label': 'spam', 'score': 0.99, 'scores': {'ham': 0.01, 'spam': 0.99}}, ...]

Texts are encoded exactly as in training (`[CLS] text [SEP]`, or `[CLS] a [SEP] b [SEP]` for
sentence pairs, truncated to the run's seq_len) and scored in jitted batches.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from ptjax.data.tokenizer import Tokenizer, check_vocab
from ptjax.run import Run
from ptjax.tasks.classification import Classification


class TextClassifier:
    """A classification model, its tokenizer and label names behind one call."""

    def __init__(
        self,
        model: Any,
        params: Any,
        tokenizer: Tokenizer,
        label_names: Sequence[str],
        seq_len: int,
        batch_size: int = 32,
    ):
        from ptjax.data import mlm  # TensorFlow only where a classifier is made.

        check_vocab(tokenizer, model.config.vocab_size)
        self.model, self.params, self.tokenizer = model, params, tokenizer
        self.label_names = list(label_names)
        self.seq_len, self.batch_size = seq_len, batch_size
        self._special = mlm.bert_special_ids(tokenizer)
        self._logits = jax.jit(functools.partial(model.apply, deterministic=True))

    @classmethod
    def from_workdir(cls, workdir: str, checkpoint: str = "latest") -> TextClassifier:
        """The run's model at `checkpoint` ('latest', 'best', a step or a step directory)."""
        run = Run.open(workdir)
        if not issubclass(run.task, Classification):
            raise ValueError(
                f"{workdir!r} holds a {run.config.task!r} run, not a classification one."
            )
        label_names = run.label_names()  # run.json's: the training data is not needed.
        model, _ = run.build(num_labels=len(label_names))
        params = run.restore_params(model, checkpoint)
        return cls(model, params, run.tokenizer, label_names, run.config.seq_len)

    def predict_proba(
        self, texts: Sequence[str], text_pairs: Sequence[str] | None = None
    ) -> np.ndarray:
        """Class probabilities [len(texts), num_labels]."""
        from ptjax.data import encoder_pipeline

        if isinstance(texts, str):
            raise TypeError("Pass a list of texts, not one string.")
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text_pairs.")
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            pairs = None
            if text_pairs is not None:
                pairs = self.tokenizer.encode_batch(list(text_pairs[start : start + len(chunk)]))
            ids, types = encoder_pipeline.encode_examples(
                self.tokenizer.encode_batch(chunk),
                pairs,
                seq_len=self.seq_len,
                cls_id=self._special.cls,
                sep_id=self._special.sep,
                pad_id=self.tokenizer.pad_id,
            )  # [n, seq_len] each
            rows = len(chunk)
            pad = self.batch_size - rows  # One compiled shape for every batch.
            ids = np.pad(ids, ((0, pad), (0, 0)))
            types = np.pad(types, ((0, pad), (0, 0)))
            mask = (ids != self.tokenizer.pad_id).astype(np.int32)
            logits = self._logits({"params": self.params}, ids, types, mask)  # [batch, labels]
            out.append(np.asarray(jax.nn.softmax(logits, axis=-1))[:rows])
        return np.concatenate(out) if out else np.zeros((0, len(self.label_names)), np.float32)

    def __call__(
        self, texts: Sequence[str], text_pairs: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Per text: {'label': best label, 'score': its probability, 'scores': every label's}."""
        probs = self.predict_proba(texts, text_pairs)
        return [
            {
                "label": self.label_names[int(np.argmax(p))],
                "score": float(np.max(p)),
                "scores": {name: float(v) for name, v in zip(self.label_names, p, strict=True)},
            }
            for p in probs
        ]
