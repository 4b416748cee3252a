"""SIGTERM / SIGINT become "stop after this step with a checkpoint", agreed by every process.

A signal handler only sets a flag; the train loop asks `should_stop(step)` once per step, which
costs a Python attribute read in a single-process run. In a multi-process run every process
must save the same step, so the flag is agreed on:

- When JAX's preemption service runs (`jax.distributed.initialize()` was called, as
  `ptjax.runtime.join_cluster` does for every multi-process run), SIGTERM is left to JAX: its
  coordination service tells every process about a notice and
  `reached_preemption_sync_point(step)` picks the same step everywhere, checked every step
  without a collective.
- Otherwise (and always for SIGINT) the processes all-gather their flags every
  `check_every_steps` steps: one tiny collective, at steps every process reaches, so a stop
  lands on the same step everywhere at most `check_every_steps` steps after the signal.

A second Ctrl-C aborts at once (KeyboardInterrupt); a repeated SIGTERM changes nothing.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


def _jax_preemption_service() -> bool:
    """Whether JAX's preemption sync manager is running in this process."""
    from jax._src import distributed

    state = distributed.global_state
    return state.client is not None and state.preemption_sync_manager is not None


class StopRequests:
    """Context manager that turns SIGTERM/SIGINT into a stop request checked between steps."""

    def __init__(self, check_every_steps: int):
        self.check_every_steps = check_every_steps
        self.signal_name: str | None = None
        self._agreed = False  # Multi-process: all processes agreed to stop.
        self._previous: dict[int, Any] = {}
        self._multi = jax.process_count() > 1
        self._jax_sync = self._multi and _jax_preemption_service()

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is not threading.main_thread():
            logging.warning("Not in the main thread: SIGTERM/SIGINT will not save a checkpoint.")
            return self
        signals = [signal.SIGINT] if self._jax_sync else [signal.SIGTERM, signal.SIGINT]
        for signum in signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if self.signal_name is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signal_name = signal.Signals(signum).name
        logging.warning(
            "Received %s: stopping after this step with a checkpoint (Ctrl-C again aborts "
            "without one).",
            self.signal_name,
        )

    def should_stop(self, step: int) -> bool:
        """Whether to save and stop after `step`; the same answer on every process."""
        if not self._multi:
            return self.signal_name is not None
        if self._agreed:
            return True
        if self._jax_sync and multihost_utils.reached_preemption_sync_point(step):
            self.signal_name = self.signal_name or "SIGTERM"
            self._agreed = True
        elif step % self.check_every_steps == 0:
            flags = multihost_utils.process_allgather(np.int32(self.signal_name is not None))
            if np.any(flags):
                self.signal_name = self.signal_name or "a signal to another process"
                self._agreed = True
        return self._agreed
