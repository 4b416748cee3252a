"""Evaluates a saved checkpoint of a run on any split: what `scripts/evaluate.py` runs.

    from ptjax.train.evaluator import evaluate_checkpoint
    result = evaluate_checkpoint("runs/spam", split="test", checkpoint="best")
    result.metrics["f1/spam"]

The run's own config, tokenizer, task and parallel mode are used (pmap, or its mesh; a mesh
that does not fit this machine's devices falls back to pmap, with a warning); the split is read
whole on all local devices (the last batch padded, nothing dropped or counted twice), and the
metrics are written to WORKDIR/results/<split>_step_<N>.json (a new file; nothing in the
workdir is replaced).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from absl import logging

from ptjax import backend, models, tasks
from ptjax.config import ConfigError, load_run_config
from ptjax.data.tokenizer import load_tokenizer
from ptjax.run import read_run_file, resolve_checkpoint, run_params
from ptjax.train import evals, parallel, steps, trainer


@dataclasses.dataclass
class EvalResult:
    metrics: dict[str, float]
    details: dict[str, Any]  # E.g. the confusion matrix and label names.
    split: str
    step: int
    checkpoint: str
    results_file: str | None


def evaluate_checkpoint(
    workdir: str,
    *,
    split: str | None = None,
    checkpoint: str = "latest",
    write: bool = True,
) -> EvalResult:
    """Metrics of one checkpoint of the run in `workdir` on `split` (default: its eval split)."""
    config = load_run_config(workdir)
    if split:
        config.dataset.eval_split = split
    config.dataset.max_eval_batches = 0  # The whole split.
    data_dir = trainer.default_data_dir(config)
    task, head_kwargs = tasks.create(config, data_dir=data_dir)
    tokenizer = load_tokenizer(trainer.tokenizer_path(config, workdir))
    model, model_config = models.build(config, tokenizer.vocab_size, **head_kwargs)
    trainer.check_tokenizer_fits(config, tokenizer, model_config)
    path, step = resolve_checkpoint(workdir, checkpoint)
    try:
        # The run's mode: pmap, or its mesh.
        par = parallel.create(config.parallelism, config.model.kernels, config.model.attention)
    except ConfigError as e:  # A mesh of another machine: the parameters still evaluate.
        logging.warning("%s Evaluating under pmap on the %d devices here.", e, jax.device_count())
        par = parallel.Parallel()
        par.forms = backend.resolve(config.model.kernels, par.devices)
        par.choose_attention(config.model.attention)
    facts = read_run_file(workdir)
    params = par.place(run_params(config, facts, workdir, path, model, par.shardings))
    p_eval_step = par.eval_step(steps.eval_step, model=model, task=task)
    data_kwargs = dict(
        data_dir=data_dir,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        local_device_count=jax.local_device_count(),
    )
    metrics, details = evals.run_eval(
        task, model, p_eval_step, params, config, tokenizer, data_kwargs, par=par
    )
    details = {**details, "checkpoint": path}
    results_file = None
    if write:
        results_file = evals.write_results(
            workdir, config.dataset.eval_split, step, metrics, details
        )
    return EvalResult(metrics, details, config.dataset.eval_split, step, path, results_file)
