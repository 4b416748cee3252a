"""Evaluating a run's parameters, in training and after it: the metric sums of an eval split
over every device and process, a task's own eval, the results files, and decoded samples for
TensorBoard; and the parameters those take (a LoRA run's merged)."""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from ptjax.data.tokenizer import Tokenizer
from ptjax.models import lora
from ptjax.train import parallel
from ptjax.train.state import AdaptedState, TrainState


def model_params_of(
    par: parallel.Parallel, spec: lora.LoraSpec | None
) -> Callable[[TrainState], Any]:
    """state -> the model's parameters as evals and samples take them: a plain state's own, a
    LoRA run's (`spec`) with the adapters merged into the kernels, on the devices where the
    state lives, by one program compiled here once."""
    if spec is None:
        return lambda state: state.params
    merged_kernels = par.compile(functools.partial(lora.merged_kernels, spec=spec))

    def merged(state: AdaptedState) -> Any:
        full = state.model_params(state.params)
        return lora.merge(full, spec, merged_kernels(full))

    return merged


def eval_sums(p_eval_step: Any, params: Any, batches: Any) -> dict[str, np.ndarray]:
    """The task's metric sums over the whole eval split (all devices and processes), on the
    host; one device-to-host transfer at the end."""
    total = None
    for batch in batches:
        sums = p_eval_step(params, batch)
        total = sums if total is None else jax.tree.map(lambda a, b: a + b, total, sums)
    if total is None:
        raise ValueError("The eval split yielded no batches.")
    # Every device holds the psum; the first one's copy is the total.
    return jax.tree.map(lambda x: np.asarray(x)[0], jax.device_get(total))


def evaluate(p_eval_step: Any, params: Any, batches: Any, task: Any) -> dict[str, float]:
    """Task metrics over the whole eval split."""
    return task.summarize(eval_sums(p_eval_step, params, batches))


def run_eval(
    task: Any,
    model: Any,
    p_eval_step: Any,
    params: Any,
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    data_kwargs: dict[str, Any],
    *,
    par: parallel.Parallel,
) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, details for the results file) of `params`, placed by `par`, on config's eval
    split.

    A task with its own `run_eval` (decoding, span post-processing on the host) runs it, under
    the same parallel mode; the others sum their metrics over every batch and device
    (`eval_sums`).
    """
    own = task.run_eval(model, params, config, tokenizer, par=par, **data_kwargs)
    if own is not None:
        return own
    sums = eval_sums(p_eval_step, params, task.eval_batches(config, tokenizer, **data_kwargs))
    return task.summarize(sums), task.details(sums)


def write_results(
    workdir: str, split: str, step: int, metrics: dict[str, float], details: dict[str, Any]
) -> str:
    """WORKDIR/results/<split>_step_<step>.json (process 0; an existing file is never replaced:
    a second evaluation of the same step gets a numbered name)."""
    directory = os.path.join(workdir, "results")
    path = os.path.join(directory, f"{split}_step_{step}.json")
    if jax.process_index() != 0:
        return path
    os.makedirs(directory, exist_ok=True)
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(directory, f"{split}_step_{step}.{n}.json")
    record = {"split": split, "step": step, "metrics": metrics, **details}
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
    return path


def samples_markdown(samples: list[dict[str, Any]], limit: int = 5) -> str:
    """Decoded eval examples as TensorBoard's text plugin shows them: prediction, references."""
    blocks = []
    for i, sample in enumerate(samples[:limit]):
        refs = sample.get("references") or [sample.get("reference", "")]
        blocks.append(f"**{i + 1}.** {sample['prediction']}\n\n*reference:* " + " | ".join(refs))
    return "\n\n---\n\n".join(blocks)


def write_samples(
    generator: Any, params: Any, config: ml_collections.ConfigDict, writer: Any, step: int
) -> list[str]:
    """Greedy completions of config.sample_prompts as a TensorBoard text summary (written and
    logged by process 0; on a mesh every process decodes with it)."""
    generator.set_params(params)
    prompts = list(config.sample_prompts)
    completions = generator.generate(prompts, max_new_tokens=config.sample_max_new_tokens)
    if jax.process_index() != 0:
        return completions
    lines = [
        f"**{p or '(document start)'}** {c}" for p, c in zip(prompts, completions, strict=True)
    ]
    writer.write_texts(step, {"samples": "\n\n".join(lines)})
    for line in lines:
        logging.info("sample at step %d: %s", step, line)
    return completions
