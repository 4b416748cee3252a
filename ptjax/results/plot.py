"""Loss and one chosen metric of several runs on shared axes, smoothed like TensorBoard's slider.

Draws on a bare matplotlib Figure (Agg canvas, no pyplot): works headless and leaves a notebook's
backend alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ptjax.results.events import Run
from ptjax.results.summary import legend_labels

LOSS_TAGS = ("train/loss", "eval/loss")
_STYLES = {"train/": "-", "eval/": "--"}


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard's debiased exponential moving average (its "smoothing" slider, 0 <= w < 1)."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {weight}")
    if not values or all(v == values[0] for v in values):
        return list(values)
    out, last, count = [], 0.0, 0
    for v in values:
        if not math.isfinite(v):
            out.append(v)  # TensorBoard passes NaN/inf through and keeps the average.
            continue
        last = last * weight + (1.0 - weight) * v
        count += 1
        out.append(last / (1.0 - weight**count))
    return out


def plot_runs(
    runs: Sequence[Run],
    path: str | None = None,
    *,
    metric: str = "eval/accuracy",
    smoothing: float = 0.6,
) -> Any:
    """Left: train (solid) and eval (dashed) loss; right: `metric`. Saves a PNG if `path`.

    Each smoothed curve carries its "run label|tag" as its gid (`curves(figure)` lists them); the
    raw values are drawn faintly behind it, as TensorBoard does. Returns the matplotlib Figure.
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError as e:
        raise ImportError("Plotting needs matplotlib: pip install 'ptjax[report]'") from e

    runs = [r for r in runs if r.scalars]
    labels = legend_labels(runs)
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    loss_ax, metric_ax = figure.subplots(1, 2, sharex=True)
    panels = [
        (loss_ax, LOSS_TAGS, "loss (solid: train, dashed: eval)"),
        (metric_ax, (metric,), metric),
    ]
    for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
        color = f"C{i % 10}"
        for ax, tags, _ in panels:
            for tag in tags:
                points = run.scalars.get(tag)
                if not points:
                    continue
                steps = [p.step for p in points]
                values = [p.value for p in points]
                style = next((s for prefix, s in _STYLES.items() if tag.startswith(prefix)), "-")
                marker = "o" if len(points) <= 20 else None  # Sparse evals: show each point.
                ax.plot(steps, values, color=color, alpha=0.25, linewidth=1, linestyle=style)
                (line,) = ax.plot(
                    steps,
                    smooth(values, smoothing),
                    color=color,
                    linestyle=style,
                    marker=marker,
                    markersize=3,
                )
                line.set_gid(f"{label}|{tag}")
    for ax, _, title in panels:
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    loss_ax.set_ylabel("loss")
    metric_ax.set_ylabel(metric)
    handles = [Line2D([], [], color=f"C{i % 10}", label=lab) for i, lab in enumerate(labels)]
    if handles:
        figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 2))
    figure.suptitle(f"smoothing {smoothing} (TensorBoard's; raw values faint)")
    if path:
        figure.savefig(path, dpi=100)
    return figure


def curves(figure: Any) -> list[str]:
    """The smoothed curves drawn on a `plot_runs` figure, as "run label|tag"."""
    return [line.get_gid() for ax in figure.axes for line in ax.get_lines() if line.get_gid()]
