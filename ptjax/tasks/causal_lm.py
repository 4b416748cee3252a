"""Next-token prediction over packed documents (GPT pretraining)."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


class CausalLM:
    name = "causal_lm"
    families = ("gpt",)

    def train_batches(self, config, tokenizer, **kwargs) -> Any:
        from ptjax.data import pipeline  # tf.data only where batches are made.

        return pipeline.lm_train_batches(config, tokenizer, **kwargs)

    def eval_batches(self, config, tokenizer, **kwargs) -> Any:
        from ptjax.data import pipeline

        return pipeline.lm_eval_batches(config, tokenizer, **kwargs)

    def loss(
        self, model: nn.Module, params: Any, batch: dict, *, rng: jax.Array, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        logits = model.apply(
            {"params": params},
            batch["inputs"],
            batch["positions"],
            batch["segment_ids"],
            deterministic=not train,
            rngs={"dropout": rng} if train else None,
        )  # [batch, length, vocab] float32
        weights = batch["weights"]
        token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        correct = (jnp.argmax(logits, axis=-1) == batch["targets"]).astype(jnp.float32)
        loss_sum = jnp.sum(token_loss * weights)
        return loss_sum, {
            "loss_sum": loss_sum,
            "correct": jnp.sum(correct * weights),
            "weight": jnp.sum(weights),
        }

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        weight = max(float(sums["weight"]), 1.0)
        loss = float(sums["loss_sum"]) / weight
        return {
            "loss": loss,
            "accuracy": float(sums["correct"]) / weight,
            "perplexity": math.exp(min(loss, 50.0)),
        }
