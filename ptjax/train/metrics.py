"""One metrics writer: TensorBoard events from the first process, progress lines in the log."""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from ptjax.data.tf_setup import import_metric_writers

metric_writers = import_metric_writers()


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def create_writer(workdir: str) -> metric_writers.MetricWriter:
    """TensorBoard + log writer on process 0; log-only elsewhere."""
    return metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=True
    )


def flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as {'a.b': value} with TensorBoard-friendly scalar values."""
    out = {}

    def visit(node: Any, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, ml_collections.ConfigDict):
                visit(value, name + ".")
            else:
                out[name] = value

    visit(config, "")
    return out


def write_config(writer: metric_writers.MetricWriter, config: ml_collections.ConfigDict) -> None:
    """Hyper-parameters and the resolved config as text at step 0."""
    writer.write_hparams(flat_config(config))
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True)
    writer.write_texts(0, {"config": "```\n" + text + "\n```"})


def steps_of(history: list[dict[str, Any]]) -> int:
    """The number of steps in a history of train calls' metrics, each [devices, k, ...]."""
    return sum(int(np.shape(m["loss"])[1]) for m in history)


def _per_step(host: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Host metrics of train calls ([devices, k, ...] each, the same on every device) as one
    float dict per step, in order."""
    return [
        jax.tree.map(lambda x, j=j: float(np.asarray(x)[0, j].flat[0]), m)
        for m in host
        for j in range(np.shape(m["loss"])[1])
    ]


def summarize_train(history: list[dict[str, Any]]) -> dict[str, float]:
    """Metrics of a log interval from the train calls' device metrics ([devices, k, ...] each:
    k steps per call) fetched in one transfer.

    Steps whose loss or gradients were not finite (their update was not applied) are left out
    of the means and counted in `nonfinite_steps`; `first_nonfinite` is the index of the first
    such step in the interval, or -1.
    """
    host = jax.device_get(history)  # One device-to-host transfer for the whole interval.
    first = _per_step(host)
    bad = [i for i, m in enumerate(first) if m["nonfinite"]]
    good = [m for m in first if not m["nonfinite"]]
    weight = sum(m["weight"] for m in good)
    return {
        "loss": float(np.mean([m["loss"] for m in good])) if good else math.nan,
        "accuracy": sum(m["correct"] for m in good) / max(weight, 1.0),
        "grad_norm": float(np.mean([m["grad_norm"] for m in good])) if good else math.nan,
        "learning_rate": first[-1]["learning_rate"],
        # Input tokens processed (a task's "tokens" sum, e.g. MLM's unpadded tokens rather
        # than its masked targets); else the loss weight (causal LM: the target tokens).
        "tokens": sum(m.get("tokens", m["weight"]) for m in good),
        "nonfinite_steps": float(len(bad)),
        "first_nonfinite": float(bad[0] if bad else -1),
    }


def first_nonfinite(history: list[dict[str, Any]]) -> int:
    """Index among `history`'s steps of the first with a non-finite loss or gradient, or -1.

    Fetches one flag per step: for the check before a checkpoint between log intervals.
    """
    flags = [
        np.asarray(f)[0].reshape(-1) for f in jax.device_get([m["nonfinite"] for m in history])
    ]
    bad = np.flatnonzero(np.concatenate(flags))  # [devices, k] per call: device 0's, in order.
    return int(bad[0]) if bad.size else -1


def nonfinite_error(step: int, last_checkpoint: int | None, where: str) -> NonFiniteLossError:
    """The error of nonfinite_policy='stop': names the first bad step and the last good save."""
    saved = (
        f"the last good checkpoint is step {last_checkpoint} in {where}"
        if last_checkpoint is not None
        else "no checkpoint was written yet"
    )
    return NonFiniteLossError(
        f"The loss or the gradients became NaN or infinite at step {step}; {saved}, and no "
        "checkpoint was written after the bad step. Lower the learning rate or check the data, "
        "or set --config.nonfinite_policy=skip to skip such updates."
    )


def check_finite(loss: float, step: int, last_checkpoint: int | None) -> None:
    """Raises NonFiniteLossError if a logged loss is NaN or infinite."""
    if not math.isfinite(loss):
        where = (
            f"the last checkpoint is step {last_checkpoint}"
            if last_checkpoint is not None
            else "no checkpoint was written yet"
        )
        raise NonFiniteLossError(
            f"Training loss became {loss} at step {step}; {where}. Lower the learning rate or "
            "check the data."
        )


class Progress:
    """Tokens/s and ETA between log intervals."""

    def __init__(self, start_step: int, total_steps: int):
        self.total_steps = total_steps
        self._last_time = time.perf_counter()
        self._last_step = start_step
        self.steps_per_second = 0.0  # Over the last update's interval.

    def update(self, step: int, tokens: float) -> tuple[float, float]:
        """(tokens per second since the last update, seconds left at that pace)."""
        now = time.perf_counter()
        elapsed = max(now - self._last_time, 1e-9)
        steps = max(step - self._last_step, 1)
        self._last_time, self._last_step = now, step
        self.steps_per_second = steps / elapsed
        eta = elapsed / steps * (self.total_steps - step)
        return tokens / elapsed, eta


def format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def log_progress(step: int, total: int, summary: dict[str, float], tps: float, eta: float) -> None:
    logging.info(
        "step %d/%d  loss %.4f  acc %.3f  lr %.3g  grad_norm %.3f  %.0f tokens/s  ETA %s",
        step,
        total,
        summary["loss"],
        summary["accuracy"],
        summary["learning_rate"],
        summary["grad_norm"],
        tps,
        format_eta(eta),
    )
