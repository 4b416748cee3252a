"""One row per run: final and best eval metrics, train loss, speed, time, the config that differs.

Rendered as a Markdown table (terminals, the README), CSV or JSON.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import statistics
from collections.abc import Sequence
from typing import Any

from ptjax.results.events import Run

# "Best" is the minimum for these metric names and the maximum for the others listed; a metric
# that matches neither gets no best value. Matched on the tag's last part, word by word.
LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "error", "wer", "cer")
HIGHER_IS_BETTER = (
    "accuracy",
    "acc",
    "f1",
    "bleu",
    "rouge",
    "exact",  # exact_match
    "em",
    "precision",
    "recall",
    "auc",
    "mcc",
)
FORMATS = ("markdown", "csv", "json")
NOTES = (
    "value @step. best: min for loss/perplexity, max for accuracy-type metrics. "
    "tokens/s: median of the logged values. wall time: summed over the events files, so the gap "
    "between a stop and its resume is not counted. Resumed steps count once (the later log wins)."
)


def metric_goal(tag: str) -> str | None:
    """'min', 'max' or None (unknown) for a metric tag such as 'eval/accuracy'.

    The last part of the tag decides; per-class tags such as 'eval/f1/spam' fall back to the
    part before the class name.
    """
    parts = [p.lower() for p in tag.split("/")]
    for leaf in reversed(parts[1:] if len(parts) > 1 else parts):
        words = re.findall(r"[a-z][a-z0-9]*", leaf)  # exact_match -> exact, match; f1 -> f1.
        if any(w in LOWER_IS_BETTER for w in words):
            return "min"
        if any(w in HIGHER_IS_BETTER for w in words) or leaf.startswith(("rouge", "bleu")):
            return "max"
    return None


@dataclasses.dataclass(frozen=True)
class MetricSummary:
    """The last value of a metric and its best one (per `metric_goal`), each with its step."""

    final: float
    final_step: int
    best: float | None
    best_step: int | None


@dataclasses.dataclass
class RunSummary:
    """One run's row of the report."""

    name: str
    workdir: str
    status: str
    detail: str
    steps: int | None
    total_steps: int | None
    train_loss: float | None
    tokens_per_second: float | None
    wall_time: float
    metrics: dict[str, MetricSummary]
    config: dict[str, Any]  # The fields that differ between the runs, and any asked for.


def summarize_metric(points: Sequence[Any], goal: str | None) -> MetricSummary:
    """Final and best of one tag's points (sorted by step, as `Run.scalars` holds them)."""
    final = points[-1]
    best = None
    finite = [p for p in points if math.isfinite(p.value)]
    if goal and finite:
        # The earliest step wins a tie: that is when the value was first reached.
        key = (lambda p: (p.value, p.step)) if goal == "min" else (lambda p: (-p.value, p.step))
        best = min(finite, key=key)
    return MetricSummary(
        final.value, final.step, best.value if best else None, best.step if best else None
    )


def differing_config(runs: Sequence[Run], always: Sequence[str] = ()) -> list[str]:
    """Config fields whose values differ between the runs that have a config, plus `always`."""
    configs = [r.config for r in runs if r.config]
    keys = sorted(set().union(*configs)) if configs else []
    differ = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    return list(always) + [k for k in differ if k not in always]


def run_names(workdirs: Sequence[str]) -> list[str]:
    """Shortest distinct path tails: runs/a runs/b -> a b; x/run y/run -> x/run y/run."""
    parts = [os.path.normpath(w).split(os.sep) for w in workdirs]
    for n in range(1, max((len(p) for p in parts), default=1) + 1):
        names = ["/".join(p[-n:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [os.path.normpath(w) for w in workdirs]


def legend_labels(runs: Sequence[Run]) -> list[str]:
    """Runs named by the config fields that differ ("optimizer.learning_rate=0.003") or by path."""
    names = run_names([r.workdir for r in runs])
    keys = differing_config(runs)
    labels = []
    for run, name in zip(runs, names, strict=True):
        fields = ", ".join(f"{k}={_cell(run.config[k])}" for k in keys if k in run.config)
        labels.append(fields or name)
    if len(set(labels)) < len(labels):  # Same config twice (or none): say which is which.
        labels = [
            name if label == name else f"{name}: {label}"
            for label, name in zip(labels, names, strict=True)
        ]
    return labels


def summarize(
    runs: Sequence[Run],
    metrics: Sequence[str] | None = None,
    config_fields: Sequence[str] = (),
    *,
    differing: bool = True,
) -> list[RunSummary]:
    """The report's rows; `metrics` defaults to every eval/ tag any run logged. The config
    columns are `config_fields` plus, with `differing`, every field that differs between runs."""
    if metrics is None:
        metrics = _metric_order({t for r in runs for t in r.scalars if t.startswith("eval/")})
    keys = differing_config(runs, config_fields) if differing else list(config_fields)
    out = []
    for run, name in zip(runs, run_names([r.workdir for r in runs]), strict=True):
        loss = run.scalars.get("train/loss")
        speed = [p.value for p in run.scalars.get("train/tokens_per_second", [])]
        total = run.config.get("total_steps")
        out.append(
            RunSummary(
                name=name,
                workdir=run.workdir,
                status=run.status,
                detail=run.detail,
                steps=run.last_step,
                total_steps=total if isinstance(total, int) else None,
                train_loss=loss[-1].value if loss else None,
                # The median shrugs off the first interval (compilation) and eval/save pauses.
                tokens_per_second=statistics.median(speed) if speed else None,
                wall_time=run.wall_time,
                metrics={
                    m: summarize_metric(run.scalars[m], metric_goal(m))
                    for m in metrics
                    if run.scalars.get(m)
                },
                config={k: run.config[k] for k in keys if k in run.config},
            )
        )
    return out


def to_records(rows: Sequence[RunSummary], metrics: Sequence[str] | None = None) -> list[dict]:
    """Flat dicts with the same columns for every run (None where a run has no value)."""
    if metrics is None:
        metrics = list(dict.fromkeys(m for r in rows for m in r.metrics))
    keys = list(dict.fromkeys(k for r in rows for k in r.config))
    records = []
    for r in rows:
        record = {
            "run": r.name,
            "workdir": r.workdir,
            "status": r.status,
            "detail": r.detail,
            "steps": r.steps,
            "total_steps": r.total_steps,
            "train_loss": r.train_loss,
            "tokens_per_second": r.tokens_per_second,
            "wall_time_s": round(r.wall_time, 3),
        }
        for m in metrics:
            s = r.metrics.get(m)
            record[m] = s.final if s else None
            record[f"{m}_step"] = s.final_step if s else None
            record[f"best_{m}"] = s.best if s else None
            record[f"best_{m}_step"] = s.best_step if s else None
        for k in keys:
            record[f"config.{k}"] = r.config.get(k)
        records.append(record)
    return records


def format_report(rows: Sequence[RunSummary], fmt: str = "markdown") -> str:
    """The report as a Markdown table (with a line of notes), CSV or JSON."""
    if fmt == "markdown":
        return markdown_table(rows) + "\n\n" + NOTES + "\n"
    records = to_records(rows)
    if fmt == "json":
        clean = [{k: _json_value(v) for k, v in r.items()} for r in records]
        return json.dumps(clean, indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(records[0]) if records else ["run"])
        writer.writeheader()
        writer.writerows(records)
        return out.getvalue()
    raise ValueError(f"Unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def markdown_table(rows: Sequence[RunSummary]) -> str:
    """Columns padded to line up in a terminal; numbers right-aligned."""
    metrics = list(dict.fromkeys(m for r in rows for m in r.metrics))  # summarize's order.
    keys = list(dict.fromkeys(k for r in rows for k in r.config))
    notes = any(r.detail for r in rows)
    header = ["run", "status", "steps", "train loss", "tokens/s", "wall time"]
    for m in metrics:
        header += [m, f"best {m}"]
    header += keys + (["note"] if notes else [])
    right = [False, False] + [True] * (4 + 2 * len(metrics)) + [False] * (len(keys) + notes)
    table = []
    for r in rows:
        steps = "" if r.steps is None else f"{r.steps}/{r.total_steps or '?'}"
        cells = [r.name, r.status, steps, _number(r.train_loss)]
        cells.append("" if r.tokens_per_second is None else f"{r.tokens_per_second:.0f}")
        cells.append(_hms(r.wall_time) if r.steps is not None else "")
        for m in metrics:
            s = r.metrics.get(m)
            cells.append(f"{_number(s.final)} @{s.final_step}" if s else "")
            cells.append(f"{_number(s.best)} @{s.best_step}" if s and s.best is not None else "")
        cells += [_cell(r.config[k]) if k in r.config else "" for k in keys]
        cells += [r.detail] if notes else []
        table.append([c.replace("|", "\\|") for c in cells])
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + ":" if r else "-" * w for w, r in zip(widths, right, strict=True)]
    return "\n".join([line(header), line(rule), *(line(row) for row in table)])


def _metric_order(tags: set[str]) -> list[str]:
    # The loss first (the headline number), then alphabetical.
    return sorted(tags, key=lambda t: (metric_goal(t) != "min" or "loss" not in t, t))


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _cell(value: Any) -> str:
    return (
        json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)
    )


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value
