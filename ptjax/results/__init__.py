"""Results of runs from their TensorBoard event files: tidy scalars, a summary table, plots.

    from ptjax import results
    rows = results.load_scalars("runs/gpt_tiny")        # [{tag, step, value, wall_time}, ...]
    frame = results.to_dataframe(rows)                  # needs pandas (the `report` extra)
    runs = [results.load_run(w) for w in ["runs/a", "runs/b"]]
    print(results.format_report(results.summarize(runs), "markdown"))
    from ptjax.results import plot; plot.plot_runs(runs, "curves.png")  # needs matplotlib

scripts/report.py is the command-line face of the same functions.
"""

from ptjax.results.events import (
    COMPLETE,
    EMPTY,
    MISSING,
    NOT_A_RUN,
    RUNNING,
    STOPPED,
    Point,
    Run,
    load_run,
    load_scalars,
    to_dataframe,
)
from ptjax.results.summary import (
    FORMATS,
    MetricSummary,
    RunSummary,
    format_report,
    metric_goal,
    summarize,
    to_records,
)

__all__ = [
    "COMPLETE",
    "EMPTY",
    "FORMATS",
    "MISSING",
    "NOT_A_RUN",
    "RUNNING",
    "STOPPED",
    "MetricSummary",
    "Point",
    "Run",
    "RunSummary",
    "format_report",
    "load_run",
    "load_scalars",
    "metric_goal",
    "summarize",
    "to_dataframe",
    "to_records",
]
