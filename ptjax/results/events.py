"""Reads one run's TensorBoard event files into scalars per tag, each step once.

A resumed run appends a new events file that re-logs the steps after its checkpoint; the later
file is the one that counts, so each file's first step drops every earlier point at or after it
(TensorBoard's own "purge orphaned data" rule). Files are read with TensorBoard's event loader,
which stops quietly at a half-written record, so a run that is still training reads as far as it
has got.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

from etils import epath

EVENTS_GLOB = "events.out.tfevents.*"
CONFIG_FILE = "config.json"  # Written by ptjax.train.trainer.save_config.
_RESUMED_CONFIG = re.compile(r"config\.step_(\d+)\.json$")
# Tags that only a ptjax trainer writes: a directory with neither these nor config.json is no run.
_PTJAX_TAGS = ("train/loss", "config")

# Run.status values.
COMPLETE = "complete"  # The last logged step reached config total_steps.
RUNNING = "running"  # Short of total_steps, events written recently.
STOPPED = "stopped"  # Short of total_steps, no events for a while: killed or paused.
EMPTY = "empty"  # Nothing logged yet.
NOT_A_RUN = "not a run"
MISSING = "missing"


class Point(NamedTuple):
    """One logged scalar."""

    step: int
    value: float
    wall_time: float


@dataclasses.dataclass(frozen=True)
class EventsFile:
    """What one events file holds: its scalars, all its tags and the span of its wall times."""

    path: str
    scalars: dict[str, list[Point]]
    tags: frozenset[str]
    first_wall_time: float | None
    last_wall_time: float | None

    @property
    def seconds(self) -> float:
        if self.first_wall_time is None or self.last_wall_time is None:
            return 0.0
        return self.last_wall_time - self.first_wall_time


@dataclasses.dataclass
class Run:
    """A workdir as the report sees it: status, merged scalars, latest config, wall time."""

    workdir: str
    status: str
    detail: str  # Why the status, for people: "no such directory", "written 4 s ago", ...
    scalars: dict[str, list[Point]]  # Sorted by step, one point per step.
    config: dict[str, Any]  # Flat {"optimizer.learning_rate": 1e-3}; the latest config file.
    wall_time: float  # Seconds, summed over events files: a stop-to-resume gap is not counted.
    event_files: int

    @property
    def last_step(self) -> int | None:
        steps = [points[-1].step for points in self.scalars.values() if points]
        return max(steps) if steps else None


def read_events_file(path: str) -> EventsFile:
    """Scalars (tensor or legacy simple-value summaries), tags and wall-time span of one file."""
    # TensorBoard's loader: it migrates legacy summaries and tolerates a truncated last record.
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.util import tensor_util

    by_tag: dict[str, dict[int, Point]] = {}
    tags = set()
    first = last = None
    for event in event_file_loader.EventFileLoader(str(path)).Load():
        first = event.wall_time if first is None else min(first, event.wall_time)
        last = event.wall_time if last is None else max(last, event.wall_time)
        for value in event.summary.value:
            tags.add(value.tag)
            if value.metadata.plugin_data.plugin_name != "scalars":
                continue
            number = float(tensor_util.make_ndarray(value.tensor).item())
            point = Point(int(event.step), number, float(event.wall_time))
            by_tag.setdefault(value.tag, {})[point.step] = point  # A repeated step: last wins.
    scalars = {tag: sorted(points.values()) for tag, points in by_tag.items()}
    return EventsFile(str(path), scalars, frozenset(tags), first, last)


def merge(files: Iterable[EventsFile]) -> dict[str, list[Point]]:
    """One point per (tag, step) over files in writing order: a later file replaces from its start.

    A file whose first logged step is S (a resume from checkpoint S-1) drops every earlier point
    at step >= S, of every tag: those steps were re-run, or belong to the abandoned attempt.
    """
    merged: dict[str, list[Point]] = {}
    for f in sorted(files, key=_writing_order):
        starts = [points[0].step for points in f.scalars.values() if points]
        if starts:
            start = min(starts)
            merged = {tag: [p for p in pts if p.step < start] for tag, pts in merged.items()}
        for tag, points in f.scalars.items():
            merged.setdefault(tag, []).extend(points)
    return {tag: points for tag, points in sorted(merged.items()) if points}


def _writing_order(f: EventsFile) -> tuple[float, float, str]:
    # The file_version record is stamped when the writer opens the file, before any summary.
    first = f.first_wall_time if f.first_wall_time is not None else math.inf
    last = f.last_wall_time if f.last_wall_time is not None else math.inf
    return first, last, f.path


def events_files(workdir: str) -> list[str]:
    """The events files directly in `workdir` (ptjax's writer puts them there)."""
    return sorted(str(p) for p in epath.Path(workdir).glob(EVENTS_GLOB))


def load_scalars(workdir: str) -> list[dict[str, Any]]:
    """One run's scalars as a tidy table: rows {tag, step, value, wall_time}, each step once."""
    if not epath.Path(workdir).is_dir():
        raise FileNotFoundError(f"{workdir} is not a directory (expected a ptjax workdir)")
    merged = merge(read_events_file(p) for p in events_files(workdir))
    return [
        {"tag": tag, "step": p.step, "value": p.value, "wall_time": p.wall_time}
        for tag, points in merged.items()
        for p in points
    ]


def to_dataframe(rows: list[dict[str, Any]]) -> Any:
    """`load_scalars` rows as a pandas DataFrame (pandas is the optional `report` extra)."""
    try:
        import pandas as pd
    except ImportError as e:
        raise ImportError(
            "to_dataframe needs pandas: pip install 'ptjax[report]' (or pandas); "
            "load_scalars returns the same rows as plain dicts."
        ) from e
    return pd.DataFrame(rows, columns=["tag", "step", "value", "wall_time"])


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested JSON config -> {"a.b": value}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _schema_defaults() -> dict[str, Any]:
    from ptjax.config import base_config

    defaults = flatten(base_config().to_dict())
    return {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}


def latest_config_file(workdir: str) -> str | None:
    """config.step_<N>.json with the largest N (a resume with changes), else config.json."""
    resumed = []
    for p in epath.Path(workdir).glob("config.step_*.json"):
        match = _RESUMED_CONFIG.search(p.name)
        if match:
            resumed.append((int(match.group(1)), str(p)))
    if resumed:
        return max(resumed)[1]
    path = epath.Path(workdir) / CONFIG_FILE
    return str(path) if path.exists() else None


def load_run(workdir: str, *, running_within: float = 600.0, now: float | None = None) -> Run:
    """Reads a workdir without ever raising on what it finds: missing, empty, no run, partial.

    A run short of its total_steps is RUNNING if an events file changed in the last
    `running_within` seconds, else STOPPED (a guess from file times; no process is inspected).
    """
    path = epath.Path(workdir)
    if not path.exists():
        return _not_loaded(workdir, MISSING, "no such directory")
    if not path.is_dir():
        return _not_loaded(workdir, NOT_A_RUN, "is a file, not a workdir")

    config_path = latest_config_file(workdir)
    config: dict[str, Any] = {}
    detail = ""
    if config_path:
        try:
            config = flatten(json.loads(epath.Path(config_path).read_text()))
            # Keys added to the schema since the run started take their defaults, so runs of
            # different ages compare on what they really set.
            config = {**_schema_defaults(), **config}
        except (ValueError, OSError) as e:  # Half-written or not ptjax's.
            detail = f"unreadable {epath.Path(config_path).name}: {e}; "
    files = [read_events_file(p) for p in events_files(workdir)]
    tags = set().union(*(f.tags for f in files))
    if not config_path and not tags.intersection(_PTJAX_TAGS):
        if not any(path.iterdir()):
            return _not_loaded(workdir, EMPTY, "nothing written yet")
        runs_below = sorted(p.name for p in path.iterdir() if (p / CONFIG_FILE).exists())
        hint = f"; holds runs {', '.join(runs_below)}: pass those" if runs_below else ""
        return _not_loaded(workdir, NOT_A_RUN, f"no {CONFIG_FILE} and no ptjax events{hint}")

    scalars = merge(files)
    wall_time = sum(f.seconds for f in files)
    run = Run(
        workdir, EMPTY, detail + "no steps logged yet", scalars, config, wall_time, len(files)
    )
    if not scalars:
        return run
    total = config.get("total_steps")
    last = run.last_step
    if isinstance(total, int) and last >= total:
        run.status, run.detail = COMPLETE, detail.rstrip("; ")
        return run
    newest = max(epath.Path(f.path).stat().mtime for f in files)
    age = max((time.time() if now is None else now) - newest, 0.0)
    if age <= running_within:
        run.status, run.detail = RUNNING, f"{detail}written {format_duration(age)} ago"
    else:
        run.status, run.detail = STOPPED, f"{detail}last written {format_duration(age)} ago"
    return run


def _not_loaded(workdir: str, status: str, detail: str) -> Run:
    return Run(workdir, status, detail, {}, {}, 0.0, 0)


def format_duration(seconds: float) -> str:
    """12 s, 3 min, 1:02:03 (h:mm:ss) for people."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
