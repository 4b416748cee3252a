"""The task registry: a task supplies its input pipeline, its loss and its eval metrics.

The trainer loop, checkpointing and logging are shared by every task. `create` makes a task for
one run: tasks that depend on the data (the number of labels, say) read it in `setup`.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from ptjax.tasks.base import Task
from ptjax.tasks.causal_lm import CausalLM
from ptjax.tasks.classification import Classification
from ptjax.tasks.extractive_qa import ExtractiveQA
from ptjax.tasks.masked_lm import MaskedLM
from ptjax.tasks.seq2seq import Seq2SeqWithDecoding, SpanCorruption

TASKS: dict[str, type[Task]] = {
    "causal_lm": CausalLM,
    "masked_lm": MaskedLM,
    "classification": Classification,
    "extractive_qa": ExtractiveQA,
    "span_corruption": SpanCorruption,
    "seq2seq": Seq2SeqWithDecoding,
}


def create(config: ml_collections.ConfigDict, *, data_dir: str) -> tuple[Task, dict[str, Any]]:
    """(the task of config.task set up for this run, keyword arguments of its model head)."""
    task = TASKS[config.task]()
    return task, task.setup(config, data_dir=data_dir)


__all__ = ["TASKS", "Task", "create"]
