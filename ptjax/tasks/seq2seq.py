"""Encoder-decoder tasks of the T5 family: span-corruption pretraining and text-to-text
fine-tuning (translation, summarization, generative QA).

Both train the decoder's next-token cross-entropy over real target tokens (packed examples are
kept apart by segment ids and per-example positions); they differ in their input pipelines
(`ptjax.data.seq2seq_pipeline`). Eval reports loss, token accuracy and perplexity over the
whole eval split.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def _loss(
    model: nn.Module, params: Any, batch: dict, *, rng: jax.Array, train: bool
) -> tuple[jax.Array, dict[str, jax.Array]]:
    encoder_segments = batch["encoder_segment_ids"]  # [batch, src_len], 0 on padding
    decoder_segments = batch["decoder_segment_ids"]  # [batch, tgt_len]
    logits = model.apply(
        {"params": params},
        batch["encoder_input_tokens"],
        batch["decoder_input_tokens"],
        encoder_segments > 0,
        decoder_segments > 0,
        encoder_segment_ids=encoder_segments,
        decoder_segment_ids=decoder_segments,
        encoder_positions=batch["encoder_positions"],
        decoder_positions=batch["decoder_positions"],
        deterministic=not train,
        rngs={"dropout": rng} if train else None,
    )  # [batch, tgt_len, vocab] float32
    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    loss_sum = jnp.sum(token_loss * weights)
    return loss_sum, {
        "loss_sum": loss_sum,
        "correct": jnp.sum(correct * weights),
        "weight": jnp.sum(weights),
        "tokens": jnp.sum(encoder_segments > 0).astype(jnp.float32) + jnp.sum(weights),
    }


def _summarize(sums: dict[str, Any]) -> dict[str, float]:
    weight = max(float(sums["weight"]), 1.0)
    loss = float(sums["loss_sum"]) / weight
    return {
        "loss": loss,
        "accuracy": float(sums["correct"]) / weight,
        "perplexity": math.exp(min(loss, 50.0)),
    }


class SpanCorruption:
    """T5 pretraining: predict the corrupted spans (sentinel + tokens) from the rest."""

    name = "span_corruption"
    families = ("t5",)
    weights_key = "decoder_loss_weights"  # The batch key the train step normalises by.

    def train_batches(self, config, tokenizer, **kwargs) -> Any:
        from ptjax.data import seq2seq_pipeline

        return seq2seq_pipeline.span_corruption_train_batches(config, tokenizer, **kwargs)

    def eval_batches(self, config, tokenizer, **kwargs) -> Any:
        from ptjax.data import seq2seq_pipeline

        return seq2seq_pipeline.span_corruption_eval_batches(config, tokenizer, **kwargs)

    loss = staticmethod(_loss)
    summarize = staticmethod(_summarize)

    def metric_names(self) -> tuple[str, ...]:
        return ("loss", "accuracy", "perplexity")


class Seq2Seq(SpanCorruption):
    """Text-to-text fine-tuning on (inputs, targets) pairs: translation, summarization, QA."""

    name = "seq2seq"

    def train_batches(self, config, tokenizer, **kwargs) -> Any:
        from ptjax.data import seq2seq_pipeline

        return seq2seq_pipeline.seq2seq_train_batches(config, tokenizer, **kwargs)

    def eval_batches(self, config, tokenizer, **kwargs) -> Any:
        from ptjax.data import seq2seq_pipeline

        return seq2seq_pipeline.seq2seq_eval_batches(config, tokenizer, **kwargs)
