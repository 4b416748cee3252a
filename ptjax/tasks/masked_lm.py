"""Masked-LM pretraining of a BERT-style encoder (dynamic masking happens in the input pipeline).

Only the selected positions are projected onto the vocabulary, as in the original BERT: the
loss gathers `max_predictions` positions per row (the pipeline's selections, found on the
device with top_k over the weights), which saves most of the output layer's FLOPs. The bound
is exact for token masking (round(mask_rate * maskable) <= ceil(mask_rate * seq_len)); whole-word
masking may overshoot by a word, so it gets slack, and any selection beyond the bound would be
counted in `eval/unpredicted` rather than lost silently.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ptjax.tasks.base import ENCODER_INPUTS, Task, spec

WHOLE_WORD_SLACK = 16  # Extra predictions per row for whole-word masking's overshoot.


def max_predictions(config: ml_collections.ConfigDict) -> int:
    """Positions per row the loss projects onto the vocabulary."""
    length = config.seq_len
    bound = max(1, math.ceil(config.mlm.mask_rate * length))
    if config.mlm.whole_word:
        bound += WHOLE_WORD_SLACK
    return min(length, bound)


class MaskedLM(Task):
    name = "masked_lm"
    families = ("bert",)

    def predicted_fraction(self, config: ml_collections.ConfigDict) -> float:
        return config.mlm.mask_rate  # Only the masked positions are projected.

    def batch_spec(self, config: ml_collections.ConfigDict, rows: int) -> dict[str, Any]:
        length = config.seq_len
        return {
            **{k: spec(rows, length) for k in ENCODER_INPUTS},
            "targets": spec(rows, length),
            "weights": spec(rows, length, dtype=float),
        }

    def __init__(self) -> None:
        self.num_predictions: int | None = None  # Set by setup(); None projects every position.

    def setup(self, config: ml_collections.ConfigDict, *, data_dir: str) -> dict[str, Any]:
        del data_dir
        self.num_predictions = max_predictions(config)
        return {}

    def train_batches(self, config, tokenizer, **kwargs) -> Any:
        from ptjax.data import encoder_pipeline  # tf.data only where batches are made.

        return encoder_pipeline.mlm_train_batches(config, tokenizer, **kwargs)

    def eval_batches(self, config, tokenizer, **kwargs) -> Any:
        from ptjax.data import encoder_pipeline

        return encoder_pipeline.mlm_eval_batches(config, tokenizer, **kwargs)

    def loss(
        self, model: nn.Module, params: Any, batch: dict, *, rng: jax.Array, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        weights = batch["weights"]  # [batch, length], 1.0 on the selected positions
        targets = batch["targets"]
        positions = None
        if self.num_predictions is not None and self.num_predictions < weights.shape[1]:
            # The selected positions first (ties keep position order); rows with fewer
            # selections are filled with weight-0 positions.
            _, positions = jax.lax.top_k(weights, self.num_predictions)  # [batch, n]
            gathered = jnp.take_along_axis(weights, positions, axis=1)
            targets = jnp.take_along_axis(targets, positions, axis=1)
        else:
            gathered = weights
        logits = model.apply(
            {"params": params},
            batch["input_ids"],
            batch["token_type_ids"],
            batch["attention_mask"],
            mlm_positions=positions,
            deterministic=not train,
            rngs={"dropout": rng} if train else None,
        )  # [batch, n, vocab] float32
        token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
        loss_sum = jnp.sum(token_loss * gathered)
        return loss_sum, {
            "loss_sum": loss_sum,
            "correct": jnp.sum(correct * gathered),
            "tokens": jnp.sum(batch["attention_mask"]).astype(jnp.float32),
            "weight": jnp.sum(gathered),
            "unpredicted": jnp.sum(weights) - jnp.sum(gathered),
        }

    def metric_names(self) -> tuple[str, ...]:
        return ("loss", "accuracy", "perplexity")

    def summarize(self, sums: dict[str, Any]) -> dict[str, float]:
        weight = max(float(sums["weight"]), 1.0)
        loss = float(sums["loss_sum"]) / weight
        out = {
            "loss": loss,
            "accuracy": float(sums["correct"]) / weight,  # MLM accuracy on masked tokens.
            "perplexity": math.exp(min(loss, 50.0)),
        }
        if float(sums.get("unpredicted", 0.0)) > 0:
            out["unpredicted"] = float(sums["unpredicted"])
        return out
