"""Extractive question answering (SQuAD v1.1 style): start/end span logits over the context.

Training: the mean of the start and end cross-entropies per window (a window without the
answer points at [CLS], as in BERT). Eval runs the model over every window of every example,
keeps the logits on the host, and picks each example's best span with BERT's n-best rules
(`ptjax.evaluation.qa_postprocess`); exact match and F1 use the official SQuAD normalisation.
With several processes, each scores its shard and the sums are added across processes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from ptjax.errors import ConfigError
from ptjax.tasks.base import ENCODER_INPUTS, Task, spec

if TYPE_CHECKING:
    from ptjax.train.parallel import Parallel


class ExtractiveQA(Task):
    name = "extractive_qa"
    families = ("bert",)
    trains_tokenizer = False  # Fine-tuning: the tokenizer comes with init_checkpoint.

    def predicted_fraction(self, config: ml_collections.ConfigDict) -> float:
        del config
        return 0.0  # Span logits; no vocabulary output.

    def batch_spec(self, config: ml_collections.ConfigDict, rows: int) -> dict[str, Any]:
        encoder = {k: spec(rows, config.seq_len) for k in ENCODER_INPUTS}
        positions = {"start_positions": spec(rows), "end_positions": spec(rows)}
        return {**encoder, **positions, "weights": spec(rows, dtype=float)}

    def __init__(self) -> None:
        self._predict_cache: dict[int, Any] = {}
        self._features: dict[tuple, tuple[list, list]] = {}

    def _eval_features(self, config, tokenizer, *, data_dir, process_index, process_count):
        """(examples, features) of this process's eval shard, built once per run: they depend
        only on the data, the tokenizer and the windowing, not on the parameters."""
        from ptjax.data import qa

        key = (config.dataset.eval_split, data_dir, tokenizer.path, process_index, process_count)
        if key not in self._features:
            self._features[key] = qa.qa_eval_features(
                config,
                tokenizer,
                split=config.dataset.eval_split,
                data_dir=data_dir,
                process_index=process_index,
                process_count=process_count,
            )
        return self._features[key]

    def setup(self, config: ml_collections.ConfigDict, *, data_dir: str) -> dict[str, Any]:
        del data_dir
        if config.dataset.max_eval_batches:
            raise ConfigError(
                f"Config key dataset.max_eval_batches={config.dataset.max_eval_batches} must be "
                "0 for task='extractive_qa': exact match and F1 are over whole examples."
            )
        return {}

    def train_batches(self, config, tokenizer, **kwargs) -> Any:
        from ptjax.data import qa

        return qa.qa_train_batches(config, tokenizer, **kwargs)

    def eval_batches(
        self, config, tokenizer, *, data_dir, process_index, process_count, local_device_count
    ) -> Any:
        from ptjax.data import qa

        _, features = self._eval_features(
            config,
            tokenizer,
            data_dir=data_dir,
            process_index=process_index,
            process_count=process_count,
        )
        return qa.qa_eval_batches(features, config, local_device_count)

    def _logits(self, model, params, batch, *, rng, train):
        return model.apply(
            {"params": params},
            batch["input_ids"],
            batch["token_type_ids"],
            batch["attention_mask"],
            deterministic=not train,
            rngs={"dropout": rng} if train else None,
        )  # (start, end): [batch, length] float32 each, -1e9 on padding

    def loss(
        self, model: nn.Module, params: Any, batch: dict, *, rng: jax.Array, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        start, end = self._logits(model, params, batch, rng=rng, train=train)
        weights = batch["weights"]  # [batch]
        starts, ends = batch["start_positions"], batch["end_positions"]
        example_loss = 0.5 * (
            optax.softmax_cross_entropy_with_integer_labels(start, starts)
            + optax.softmax_cross_entropy_with_integer_labels(end, ends)
        )
        exact = (jnp.argmax(start, -1) == starts) & (jnp.argmax(end, -1) == ends)
        loss_sum = jnp.sum(example_loss * weights)
        return loss_sum, {
            "loss_sum": loss_sum,
            "tokens": jnp.sum(batch["attention_mask"]).astype(jnp.float32),
            "weight": jnp.sum(weights),
            "correct": jnp.sum(exact * weights),  # Windows with both span ends right.
        }

    def metric_names(self) -> tuple[str, ...]:
        return ("loss", "span_accuracy", "exact_match", "f1", "examples", "windows")

    def summarize(self, sums: dict[str, Any]) -> dict[str, float]:
        weight = max(float(sums["weight"]), 1.0)
        return {
            "loss": float(sums["loss_sum"]) / weight,
            "span_accuracy": float(sums["correct"]) / weight,
        }

    def _predict(self, par: Parallel, model: nn.Module) -> Any:
        """(params, batch) -> (loss sums, (start, end logits)) under the run's parallel mode
        (`Parallel.predict_step`), compiled once per model."""
        key = (id(par), id(model))
        if key not in self._predict_cache:

            def predict(params, batch):
                start, end = self._logits(model, params, batch, rng=None, train=False)
                _, sums = self.loss(model, params, batch, rng=None, train=False)
                return sums, (start, end)

            self._predict_cache[key] = par.predict_step(predict)
        return self._predict_cache[key]

    def run_eval(
        self,
        model: nn.Module,
        params: Any,
        config: ml_collections.ConfigDict,
        tokenizer: Any,
        *,
        par: Parallel,
        data_dir: str,
        process_index: int,
        process_count: int,
        local_device_count: int,
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """(metrics, details) over the whole eval split; `params` as `par` (the run's
        `ptjax.train.parallel.Parallel`) places them."""
        from ptjax.data import qa
        from ptjax.evaluation import qa_postprocess

        examples, features = self._eval_features(
            config,
            tokenizer,
            data_dir=data_dir,
            process_index=process_index,
            process_count=process_count,
        )
        num_batches = qa.qa_eval_num_batches(len(features), config, local_device_count)
        if process_count > 1:  # Every process runs as many batches (each is collective).
            counts = multihost_utils.process_allgather(np.int32(num_batches))
            num_batches = int(np.max(counts))
        length = config.seq_len
        start_rows = np.zeros((len(features), length), np.float32)
        end_rows = np.zeros((len(features), length), np.float32)
        total = None
        predict = self._predict(par, model)
        for batch in qa.qa_eval_batches(
            features, config, local_device_count, num_batches=num_batches
        ):
            index = batch.pop("feature_index").reshape(-1)  # [devices * per_device]
            sums, (start, end) = predict(params, batch)  # This process's rows, on the host.
            real = index >= 0
            start_rows[index[real]] = start.reshape(-1, length)[real]
            end_rows[index[real]] = end.reshape(-1, length)[real]
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
        host = jax.tree.map(lambda x: np.asarray(x)[0], jax.device_get(total))
        metrics = self.summarize(host)
        predictions = qa_postprocess.predict_answers(
            examples,
            features,
            start_rows,
            end_rows,
            n_best=config.qa.n_best,
            max_answer_len=config.qa.max_answer_len,
        )
        scores = qa_postprocess.score(examples, predictions)
        count = float(scores["count"])
        local = np.array(
            [scores["exact_match"] * count / 100, scores["f1"] * count / 100, count], np.float64
        )
        if process_count > 1:
            local = np.sum(multihost_utils.process_allgather(local), axis=0)
        em_sum, f1_sum, count = (float(v) for v in local)
        metrics.update(
            exact_match=100.0 * em_sum / max(count, 1.0),
            f1=100.0 * f1_sum / max(count, 1.0),
            examples=count,
            windows=float(host["weight"]),
        )
        sample = dict(list(predictions.items())[:20])
        return metrics, {"predictions_sample": sample}
