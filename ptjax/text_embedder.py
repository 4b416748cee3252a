"""Sentence embeddings from a BERT-style run, as sentence-transformers users make them.

    from ptjax import TextEmbedder
    embed = TextEmbedder.from_workdir("runs/minilm")         # an imported embedding model
    vectors = embed(["A man is eating food.", "Someone eats."])  # [2, d_model] float32

Each text is encoded as `[CLS] text [SEP]` (cut to `max_len` tokens), run through the encoder,
and its last hidden states are pooled over the real tokens only (padding never enters a pool):
'mean', 'cls', 'max' or 'mean_sqrt_len' (the mean times sqrt(length)), or several of them
concatenated. By default the pooling, the L2 normalisation and the length come from the
sentence-transformers files a Hugging Face import carries into WORKDIR/sentence_transformers
(modules.json, 1_Pooling/config.json, sentence_bert_config.json); a run without them pools the
mean, unnormalised, over up to the model's max_len tokens. Any of the three can be chosen.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ptjax import models
from ptjax.data.tokenizer import Tokenizer
from ptjax.interop import hf_pooling
from ptjax.run import Run

_LENGTH_BUCKET = 32  # Batches are padded to a multiple of this many tokens: few compiled shapes.


def pool(
    hidden: jax.Array,  # [batch, length, d_model]
    mask: jax.Array,  # [batch, length], 1 on real tokens
    poolings: Sequence[str],
    normalize: bool,
) -> jax.Array:
    """[batch, d_model * len(poolings)] float32: each pooling over the real tokens, in order."""
    hidden = hidden.astype(jnp.float32)
    real = mask.astype(jnp.float32)[..., None]  # [batch, length, 1]
    count = jnp.maximum(real.sum(axis=1), 1e-9)  # [batch, 1]
    out = []
    for name in poolings:
        if name == "cls":
            out.append(hidden[:, 0])
        elif name == "max":
            out.append(jnp.where(real > 0, hidden, -1e9).max(axis=1))
        elif name == "mean":
            out.append((hidden * real).sum(axis=1) / count)
        else:  # mean_sqrt_len
            out.append((hidden * real).sum(axis=1) / jnp.sqrt(count))
    vectors = jnp.concatenate(out, axis=-1)
    if normalize:
        norm = jnp.linalg.norm(vectors, axis=-1, keepdims=True)
        vectors = vectors / jnp.maximum(norm, 1e-12)  # As torch's F.normalize.
    return vectors


class TextEmbedder:
    """A BERT-style encoder, its tokenizer and a pooling behind one call: texts -> vectors."""

    def __init__(
        self,
        encoder: Any,
        params: Any,
        tokenizer: Tokenizer,
        *,
        pooling: Sequence[str] = ("mean",),
        normalize: bool = False,
        max_len: int = 0,
        batch_size: int = 32,
    ):
        from ptjax.data import mlm  # numpy only; the ids of [CLS] and [SEP].

        pooling = (pooling,) if isinstance(pooling, str) else tuple(pooling)
        bad = [p for p in pooling if p not in hf_pooling.POOLINGS]
        if not pooling or bad:
            raise ValueError(f"pooling={pooling!r}; choose from {hf_pooling.POOLINGS}.")
        limit = encoder.config.max_len
        if max_len < 0 or max_len > limit:
            raise ValueError(f"max_len={max_len} must lie in [2, {limit}] (0: {limit}).")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be positive.")
        self.encoder, self.params, self.tokenizer = encoder, params, tokenizer
        self.pooling, self.normalize = pooling, bool(normalize)
        self.max_len = max(max_len or limit, 2)
        self.batch_size = batch_size
        self._special = mlm.bert_special_ids(tokenizer)

        def embed(params, ids, mask):
            hidden = encoder.apply({"params": params}, ids, None, mask).hidden_states
            return pool(hidden, mask, self.pooling, self.normalize)

        self._embed = jax.jit(embed)

    @property
    def dimension(self) -> int:
        return self.encoder.config.d_model * len(self.pooling)

    @classmethod
    def from_workdir(
        cls,
        workdir: str,
        checkpoint: str = "latest",
        *,
        pooling: str | Sequence[str] | None = None,
        normalize: bool | None = None,
        max_len: int = 0,
        batch_size: int = 32,
    ) -> TextEmbedder:
        """The encoder of a BERT-family run at `checkpoint` ('latest', 'best', a step or a step
        directory); pooling, normalize and max_len default to the run's sentence-transformers
        settings (see the module docstring)."""
        from ptjax.train.checkpoint import restore_matching_params

        run = Run.open(workdir)
        config, tokenizer = run.config, run.tokenizer
        if config.model.family != "bert":
            raise ValueError(
                f"{workdir!r} holds a {config.model.family!r} model; sentence embeddings come "
                "from BERT-style encoders."
            )
        settings = hf_pooling.settings(os.path.join(workdir, hf_pooling.ST_DIR))
        source = "sentence-transformers files" if settings else "defaults"
        pooling = pooling or settings.get("pooling") or ("mean",)
        normalize = settings.get("normalize", False) if normalize is None else normalize
        max_len = max_len or settings.get("max_len", 0)
        model_config = models.MODELS["bert"].make_config(config, tokenizer.vocab_size)
        encoder = models.bert.Bert(model_config)
        dummy = jnp.zeros((1, 2), jnp.int32)
        abstract = jax.eval_shape(encoder.init, jax.random.PRNGKey(0), dummy)["params"]
        fresh = {"bert": jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)}
        path, _ = run.checkpoint(checkpoint)
        if config.finetune.lora.rank:  # Its adapters merged into its base's encoder.
            params = run.restore_params(run.build()[0], checkpoint)["bert"]
        else:
            restored = restore_matching_params(path, fresh)
            if restored.fresh:
                raise ValueError(
                    f"{path} lacks encoder parameters {restored.fresh[:5]}; it is not a BERT "
                    "run's checkpoint."
                )
            params = restored.params["bert"]
        embedder = cls(
            encoder,
            params,
            tokenizer,
            pooling=pooling,
            normalize=normalize,
            max_len=min(max_len, model_config.max_len),
            batch_size=batch_size,
        )
        logging.info(
            "Embedding with %s pooling%s over up to %d tokens (%s of %s).",
            "+".join(embedder.pooling),
            ", L2-normalised" if embedder.normalize else "",
            embedder.max_len,
            source,
            workdir,
        )
        return embedder

    def _rows(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """ids and mask [batch_size, bucketed length] of `[CLS] text [SEP]` rows."""
        encoded = self.tokenizer.encode_batch(list(texts))
        rows = [[self._special.cls, *ids[: self.max_len - 2], self._special.sep] for ids in encoded]
        longest = max(len(r) for r in rows)
        length = min(-(-longest // _LENGTH_BUCKET) * _LENGTH_BUCKET, self.max_len)
        ids = np.full((self.batch_size, length), self.tokenizer.pad_id, np.int32)
        mask = np.zeros((self.batch_size, length), np.int32)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dimension] float32 vectors."""
        if isinstance(texts, str):
            raise TypeError("Pass a list of texts, not one string.")
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            ids, mask = self._rows(chunk)
            out.append(np.asarray(self._embed(self.params, ids, mask))[: len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, self.dimension), np.float32)
