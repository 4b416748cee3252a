"""The interface between a task and the shared trainer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import flax.linen as nn
import jax
import ml_collections

Batch = dict[str, Any]


class Task(Protocol):
    """A training objective with its data and metrics.

    `loss` returns sums (not means) over the local batch, so the step can normalise by the
    count over all devices: the loss is the mean over every target token of the global batch.
    The returned metric dict holds sums too and must include 'weight' (the token count).
    """

    name: str
    families: tuple[str, ...]  # Model families (keys of ptjax.models.MODELS) it can train.
    # Optional `weights_key`: the batch key of the loss weights the train step normalises by
    # (default 'weights'; T5's tasks use 'decoder_loss_weights').

    def train_batches(
        self,
        config: ml_collections.ConfigDict,
        tokenizer: Any,
        *,
        data_dir: str,
        process_index: int,
        process_count: int,
        local_device_count: int,
    ) -> Any: ...

    def eval_batches(
        self,
        config: ml_collections.ConfigDict,
        tokenizer: Any,
        *,
        data_dir: str,
        process_index: int,
        process_count: int,
        local_device_count: int,
    ) -> Iterator[Batch]: ...

    def loss(
        self, model: nn.Module, params: Any, batch: Batch, *, rng: jax.Array, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]: ...

    def metric_names(self) -> tuple[str, ...]:
        """The keys `summarize` returns (checked against config.best_metric up front)."""
        ...

    def summarize(self, sums: dict[str, float]) -> dict[str, float]: ...
