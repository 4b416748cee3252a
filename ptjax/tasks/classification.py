"""Sequence classification (single sentences or pairs) on the pooled [CLS] output.

Eval sums a weighted confusion matrix over every device and batch (padding rows weigh 0), so
accuracy, per-class and macro precision/recall/F1 and MCC are exact over the whole split.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ptjax.evaluation import classification as metrics_lib
from ptjax.tasks.base import ENCODER_INPUTS, Task, spec


class Classification(Task):
    name = "classification"
    families = ("bert",)

    def predicted_fraction(self, config: ml_collections.ConfigDict) -> float:
        del config
        return 0.0  # A classifier on [CLS]; no vocabulary output.

    def batch_spec(self, config: ml_collections.ConfigDict, rows: int) -> dict[str, Any]:
        encoder = {k: spec(rows, config.seq_len) for k in ENCODER_INPUTS}
        return {**encoder, "labels": spec(rows), "weights": spec(rows, dtype=float)}

    def head_kwargs(self, config: ml_collections.ConfigDict) -> dict[str, Any] | None:
        """model.num_labels when set; else only the data can tell (None)."""
        return {"num_labels": config.model.num_labels} if config.model.num_labels else None

    def __init__(self) -> None:
        self.label_names: list[str] | None = None

    def setup(self, config: ml_collections.ConfigDict, *, data_dir: str) -> dict[str, Any]:
        """Reads the label names from the data; returns the head size for the model."""
        from ptjax import config as config_lib
        from ptjax.data import encoder_pipeline

        names = list(encoder_pipeline.label_names(config, data_dir))
        if config.model.num_labels and config.model.num_labels != len(names):
            raise config_lib.ConfigError(
                f"Config key model.num_labels={config.model.num_labels}, but dataset "
                f"{config.dataset.name!r} has {len(names)} labels ({', '.join(names)}); set it "
                "to 0 to take the dataset's."
            )
        self.label_names = names
        return {"num_labels": len(names)}

    def train_batches(self, config, tokenizer, **kwargs) -> Any:
        from ptjax.data import encoder_pipeline

        return encoder_pipeline.classification_train_batches(config, tokenizer, **kwargs)

    def eval_batches(self, config, tokenizer, **kwargs) -> Any:
        from ptjax.data import encoder_pipeline

        return encoder_pipeline.classification_eval_batches(config, tokenizer, **kwargs)

    def loss(
        self, model: nn.Module, params: Any, batch: dict, *, rng: jax.Array, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        logits = model.apply(
            {"params": params},
            batch["input_ids"],
            batch["token_type_ids"],
            batch["attention_mask"],
            deterministic=not train,
            rngs={"dropout": rng} if train else None,
        )  # [batch, num_labels] float32
        labels, weights = batch["labels"], batch["weights"]  # [batch] each
        example_loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        predictions = jnp.argmax(logits, axis=-1)
        loss_sum = jnp.sum(example_loss * weights)
        return loss_sum, {
            "loss_sum": loss_sum,
            "tokens": jnp.sum(batch["attention_mask"]).astype(jnp.float32),
            "weight": jnp.sum(weights),
            "correct": jnp.sum((predictions == labels) * weights),
            "confusion": metrics_lib.confusion_matrix(
                labels, predictions, logits.shape[-1], weights
            ),  # [num_labels, num_labels]
        }

    def run_facts(self) -> dict[str, Any]:
        return {"label_names": self.label_names}

    def inference_head(self, facts: dict[str, Any]) -> dict[str, Any]:
        return {"num_labels": len(facts["label_names"])}

    def metric_names(self) -> tuple[str, ...]:
        names = self.label_names or []
        per_class = [f"{m}/{n}" for m in ("precision", "recall", "f1") for n in names]
        overall = ("loss", "accuracy", "macro_precision", "macro_recall", "macro_f1", "mcc")
        return (*overall, *per_class, "examples")

    def summarize(self, sums: dict[str, Any]) -> dict[str, float]:
        weight = max(float(sums["weight"]), 1.0)
        confusion = np.asarray(sums["confusion"])
        out = {"loss": float(sums["loss_sum"]) / weight}
        out.update(metrics_lib.scores(confusion, self.label_names))
        out["examples"] = float(sums["weight"])
        return out

    def details(self, sums: dict[str, Any]) -> dict[str, Any]:
        """What the results file holds beyond the scalars: the confusion matrix and labels."""
        return {
            "label_names": self.label_names,
            "confusion_matrix": np.asarray(sums["confusion"]).round().astype(int).tolist(),
        }
