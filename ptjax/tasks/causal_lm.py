"""Next-token prediction over packed documents (GPT pretraining)."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ptjax.tasks import losses
from ptjax.tasks.base import Task, spec


class CausalLM(Task):
    name = "causal_lm"
    families = ("gpt", "llama")
    samples_text = True  # Its model continues sample_prompts during training.

    def batch_spec(self, config: ml_collections.ConfigDict, rows: int) -> dict[str, Any]:
        keys = ("inputs", "targets", "positions", "segment_ids")
        length = config.seq_len
        return {**{k: spec(rows, length) for k in keys}, "weights": spec(rows, length, dtype=float)}

    def train_batches(self, config, tokenizer, **kwargs) -> Any:
        from ptjax.data import lm_pipeline  # tf.data only where batches are made.

        return lm_pipeline.lm_train_batches(config, tokenizer, **kwargs)

    def eval_batches(self, config, tokenizer, **kwargs) -> Any:
        from ptjax.data import lm_pipeline

        return lm_pipeline.lm_eval_batches(config, tokenizer, **kwargs)

    def loss(
        self, model: nn.Module, params: Any, batch: dict, *, rng: jax.Array, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        hidden, embedding = model.apply(
            {"params": params},
            batch["inputs"],
            batch["positions"],
            batch["segment_ids"],
            deterministic=not train,
            rngs={"dropout": rng} if train else None,
            return_hidden=True,
        )  # [batch, length, d_model], [vocab, d_model]
        weights = batch["weights"]
        # Softmax cross-entropy and argmax hits of the tied logits, fused (see losses.py).
        token_loss, correct = losses.output_cross_entropy(
            hidden, embedding, batch["targets"]
        )  # [batch, length] each
        correct = correct.astype(jnp.float32)
        loss_sum = jnp.sum(token_loss * weights)
        return loss_sum, {
            "loss_sum": loss_sum,
            "correct": jnp.sum(correct * weights),
            "weight": jnp.sum(weights),
        }

    def metric_names(self) -> tuple[str, ...]:
        return ("loss", "accuracy", "perplexity")

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        weight = max(float(sums["weight"]), 1.0)
        loss = float(sums["loss_sum"]) / weight
        return {
            "loss": loss,
            "accuracy": float(sums["correct"]) / weight,
            "perplexity": math.exp(min(loss, 50.0)),
        }
