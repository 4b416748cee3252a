"""The interface between a task and the shared trainer and tools: every hook they call, declared
here with its default, so that nothing outside ptjax/tasks/ asks which task it holds."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

Batch = dict[str, Any]
ENCODER_INPUTS = ("input_ids", "token_type_ids", "attention_mask")  # BERT-style batches' inputs.


def spec(*shape: int, dtype: Any = jnp.int32) -> jax.ShapeDtypeStruct:
    """An abstract batch entry, for `Task.batch_spec`."""
    return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))


class Task(abc.ABC):
    """A training objective with its data and metrics.

    `loss` returns sums (not means) over the local batch, so the step can normalise by the
    count over all devices: the loss is the mean over every target token of the global batch.
    The returned metric dict holds sums too and must include 'weight' (the token count).
    """

    name: str
    families: tuple[str, ...]  # Model families (keys of ptjax.models.MODELS) it can train.
    weights_key: str = "weights"  # The batch key of the loss weights the step normalises by.
    samples_text: bool = False  # Whether training draws text samples (sample_prompts) from it.
    trains_tokenizer: bool = True  # Whether a run without one trains a tokenizer on its data.

    # Set-up and data.

    def setup(self, config: ml_collections.ConfigDict, *, data_dir: str) -> dict[str, Any]:
        """Reads what the task needs of the data before the model is built; returns keyword
        arguments of the model head (classification: num_labels)."""
        del config, data_dir
        return {}

    def head_kwargs(self, config: ml_collections.ConfigDict) -> dict[str, Any] | None:
        """The model head's keyword arguments from the config alone, or None when only `setup`
        (reading the data) can tell: what the pre-flight estimate builds the model with."""
        del config
        return {}

    def tokenizer_texts(
        self, config: ml_collections.ConfigDict, *, data_dir: str, max_texts: int
    ) -> Iterable[str] | None:
        """Texts to train the run's tokenizer on; None: the dataset's text_key."""
        del config, data_dir, max_texts
        return None

    @abc.abstractmethod
    def batch_spec(self, config: ml_collections.ConfigDict, rows: int) -> dict[str, Any]:
        """Shapes and dtypes of one device's train batch of `rows` rows (ShapeDtypeStructs, see
        `spec`): what the input pipeline yields per device, without building it."""

    @abc.abstractmethod
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

    @abc.abstractmethod
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

    # Loss and metrics.

    @abc.abstractmethod
    def loss(
        self, model: nn.Module, params: Any, batch: Batch, *, rng: jax.Array, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]: ...

    @abc.abstractmethod
    def metric_names(self) -> tuple[str, ...]:
        """The keys `summarize` returns (checked against config.best_metric up front)."""

    @abc.abstractmethod
    def summarize(self, sums: dict[str, float]) -> dict[str, float]: ...

    def details(self, sums: dict[str, Any]) -> dict[str, Any]:
        """What the results file keeps beyond the metrics (a confusion matrix, say)."""
        del sums
        return {}

    def run_eval(
        self,
        model: nn.Module,
        params: Any,
        config: ml_collections.ConfigDict,
        tokenizer: Any,
        *,
        par: Any,
        data_dir: str,
        process_index: int,
        process_count: int,
        local_device_count: int,
    ) -> tuple[dict[str, float], dict[str, Any]] | None:
        """(metrics, details) of an eval the task runs itself (decoding, span post-processing
        on the host) under `par` (ptjax.train.parallel.Parallel); None: the trainer sums the
        eval step's metrics over `eval_batches`."""
        del model, params, config, tokenizer, par, data_dir
        del process_index, process_count, local_device_count
        return None

    # Inference.

    def run_facts(self) -> dict[str, Any]:
        """What inference needs from the task's set-up, recorded in the run's run.json
        (ptjax.run): classification's label names."""
        return {}

    def inference_head(self, facts: dict[str, Any]) -> dict[str, Any]:
        """The model head's keyword arguments from `run_facts` as a run recorded them, for
        when `head_kwargs` cannot tell from the config."""
        del facts
        return {}

    def input_prefix(self, config: ml_collections.ConfigDict) -> str:
        """The text the run's dataset puts before every input (T5's "translate ...: ")."""
        del config
        return ""

    # Accounting.

    def predicted_fraction(self, config: ml_collections.ConfigDict) -> float:
        """The share of positions the model's vocabulary output runs on in training, for its
        FLOPs (train/mfu, estimate.py): every position for language models."""
        del config
        return 1.0
