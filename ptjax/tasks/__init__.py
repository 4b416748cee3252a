"""The task registry: a task supplies its input pipeline, its loss and its eval metrics.

The trainer loop, checkpointing and logging are shared by every task.
"""

from __future__ import annotations

from ptjax.tasks.base import Task
from ptjax.tasks.causal_lm import CausalLM

TASKS: dict[str, Task] = {
    "causal_lm": CausalLM(),
}

__all__ = ["TASKS", "Task"]
