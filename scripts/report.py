"""Summarises runs from their TensorBoard events: python scripts/report.py WORKDIR [WORKDIR ...].

Prints one row per run: final and best eval metrics with their steps, train loss, tokens/s, wall
time, steps, and the config fields that differ between the runs. Workdirs that are missing, empty,
still training or not ptjax runs get a row that says so.

  python scripts/report.py runs/* --format=csv > results.csv
  python scripts/report.py runs/lr_* --plot=curves.png --plot_metric=eval/perplexity
"""

import sys

from absl import app, flags

from ptjax import results

FLAGS = flags.FLAGS
flags.DEFINE_enum("format", "markdown", results.FORMATS, "Table format.")
flags.DEFINE_list("metrics", None, "Metric tags to report (default: every eval/ tag).")
flags.DEFINE_list("config_fields", [], "Config fields to show even where the runs agree.")
flags.DEFINE_bool("differing", True, "Also show every config field that differs between the runs.")
flags.DEFINE_string("plot", None, "Also draw loss and --plot_metric curves into this PNG.")
flags.DEFINE_string("plot_metric", "eval/accuracy", "The metric of the plot's second panel.")
flags.DEFINE_float("smoothing", 0.6, "TensorBoard-style smoothing of the plotted curves, [0, 1).")
flags.DEFINE_float(
    "running_within", 600, "An unfinished run with events this recent (s) is 'running'."
)


def main(argv):
    workdirs = argv[1:]
    if not workdirs:
        raise app.UsageError("Name one or more workdirs: report.py WORKDIR [WORKDIR ...]")
    if not 0.0 <= FLAGS.smoothing < 1.0:
        raise app.UsageError(f"--smoothing must be in [0, 1), got {FLAGS.smoothing}")
    runs = [results.load_run(w, running_within=FLAGS.running_within) for w in workdirs]
    rows = results.summarize(runs, FLAGS.metrics, FLAGS.config_fields, differing=FLAGS.differing)
    print(results.format_report(rows, FLAGS.format), end="")
    if FLAGS.plot:
        from ptjax.results import plot

        figure = plot.plot_runs(
            runs, FLAGS.plot, metric=FLAGS.plot_metric, smoothing=FLAGS.smoothing
        )
        # To stderr: stdout stays a clean table for pipes.
        sys.stderr.write(f"Wrote {FLAGS.plot} ({len(plot.curves(figure))} curves)\n")


if __name__ == "__main__":
    app.run(main)
