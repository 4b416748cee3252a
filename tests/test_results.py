"""The results report over real runs: one straight, one killed and resumed, and odd workdirs."""

import csv
import glob
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import pytest

from ptjax import results
from ptjax.config_presets import gpt_config
from ptjax.data import corpora
from ptjax.data.tf_setup import import_tf
from ptjax.data.tokenizer import train_tokenizer
from ptjax.results import plot
from ptjax.train import metrics as metrics_lib
from ptjax.train import trainer

tf = import_tf()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir, tokenizer_file, **changes):
    """The tiny 12-step run of test_train_e2e (one block): eval at 6 and 12."""
    config = gpt_config("tiny")
    config.dataset.data_dir = data_dir
    config.tokenizer.path = tokenizer_file
    config.model.num_layers = 1
    config.seq_len = 32
    config.per_device_batch_size = 1
    config.total_steps = 12
    config.optimizer.warmup_steps = 2
    config.log_every_steps = 1
    config.eval_every_steps = 6
    config.checkpoint_every_steps = 6
    config.dataset.max_eval_batches = 2
    config.dataset.shuffle_buffer = 64
    config.update(changes)
    return config


class Killed(Exception):
    """Stands in for a pre-emption: the process dies between checkpoints."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory, monkeypatch_module):
    """straight: 12 steps. resumed: killed after step 7 (checkpoint 5), resumed to 12.
    stopped: a copy of `resumed` taken while it was dead at step 7."""
    root = tmp_path_factory.mktemp("runs")
    data_dir = str(root / "tfds")
    spm = str(root / "spm.model")
    texts = corpora.iterate_texts(
        gpt_config("tiny").dataset, "train", data_dir=data_dir, max_texts=2000
    )
    train_tokenizer(texts, spm, vocab_size=512)

    straight = str(root / "straight")
    trainer.train_and_evaluate(tiny_config(data_dir, spm), straight)

    resumed = str(root / "resumed")
    config = tiny_config(data_dir, spm, checkpoint_every_steps=5)
    config.optimizer.learning_rate = 3e-3
    check_finite = metrics_lib.check_finite

    def die_at_step_8(loss, step, last_saved):
        if step == 8:  # Steps 1..7 and eval 6 are logged; the last checkpoint is step 5.
            raise Killed
        check_finite(loss, step, last_saved)

    monkeypatch_module.setattr(metrics_lib, "check_finite", die_at_step_8)
    with pytest.raises(Killed):
        trainer.train_and_evaluate(config, resumed)
    monkeypatch_module.setattr(metrics_lib, "check_finite", check_finite)
    stopped = str(root / "stopped")
    shutil.copytree(resumed, stopped)
    trainer.train_and_evaluate(config, resumed)  # Re-logs steps 6 and 7 in a new events file.
    return {"straight": straight, "resumed": resumed, "stopped": stopped}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def raw_events(workdir):
    """[(file, tag, step, value, wall_time)] straight from the files, duplicates and all."""
    out = []
    for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name == "scalars":
                    number = float(tf.make_ndarray(v.tensor))
                    out.append((path, v.tag, event.step, number, event.wall_time))
    return out


def test_resumed_run_counts_each_step_once(runs):
    raw = raw_events(runs["resumed"])
    assert len({e[0] for e in raw}) == 2
    assert sorted(e[2] for e in raw if e[1] == "train/loss") == [
        1,
        2,
        3,
        4,
        5,
        6,
        6,
        7,
        7,
        8,
        9,
        10,
        11,
        12,
    ]
    rows = results.load_scalars(runs["resumed"])
    loss = [r for r in rows if r["tag"] == "train/loss"]
    assert [r["step"] for r in loss] == list(range(1, 13))
    assert [r["step"] for r in rows if r["tag"] == "eval/loss"] == [6, 12]
    # Steps 6 and 7 come from the resumed (second) file: the later log is the one that counts.
    second = max({e[0] for e in raw}, key=lambda path: min(e[4] for e in raw if e[0] == path))
    from_second = {(e[1], e[2]): e[4] for e in raw if e[0] == second}
    for r in loss[5:7]:
        assert r["wall_time"] == pytest.approx(from_second["train/loss", r["step"]])


def test_summary_of_finished_runs(runs):
    loaded = [results.load_run(runs["straight"]), results.load_run(runs["resumed"])]
    assert [r.status for r in loaded] == [results.COMPLETE, results.COMPLETE]
    rows = results.summarize(loaded)
    assert [r.name for r in rows] == ["straight", "resumed"]
    for row, workdir in zip(rows, [runs["straight"], runs["resumed"]], strict=True):
        raw = raw_events(workdir)
        last = {}  # (tag, step) -> value, the later file winning.
        for _, tag, step, value, _ in sorted(raw, key=lambda e: e[4]):
            last[tag, step] = value
        assert (row.steps, row.total_steps) == (12, 12)
        assert row.train_loss == pytest.approx(last["train/loss", 12])
        speeds = [v for (tag, _), v in last.items() if tag == "train/tokens_per_second"]
        assert len(speeds) == 12
        assert row.tokens_per_second == pytest.approx(statistics.median(speeds))
        eval_loss = {step: v for (tag, step), v in last.items() if tag == "eval/loss"}
        best_step = min(eval_loss, key=eval_loss.get)
        summary = row.metrics["eval/loss"]
        assert (summary.final, summary.final_step) == (pytest.approx(eval_loss[12]), 12)
        assert (summary.best, summary.best_step) == (pytest.approx(eval_loss[best_step]), best_step)
        accuracy = row.metrics["eval/accuracy"]
        assert accuracy.best == pytest.approx(
            max(v for (t, _), v in last.items() if t == "eval/accuracy")
        )
        spans = {}
        for path, *_, wall in raw_events_all(workdir):
            lo, hi = spans.get(path, (wall, wall))
            spans[path] = (min(lo, wall), max(hi, wall))
        assert row.wall_time == pytest.approx(sum(hi - lo for lo, hi in spans.values()))
    assert list(rows[0].metrics) == ["eval/loss", "eval/accuracy", "eval/perplexity"]
    assert rows[0].config == {"checkpoint_every_steps": 6, "optimizer.learning_rate": 0.001}
    assert rows[1].config == {"checkpoint_every_steps": 5, "optimizer.learning_rate": 0.003}


def raw_events_all(workdir):
    """[(file, wall_time)] of every event, not only scalars: the span wall time is taken over."""
    out = []
    for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
        out.extend((path, e.wall_time) for e in tf.compat.v1.train.summary_iterator(path))
    return out


def test_formats(runs):
    loaded = [results.load_run(runs["straight"]), results.load_run(runs["resumed"])]
    rows = results.summarize(loaded, config_fields=["model.size"])
    markdown = results.format_report(rows, "markdown")
    lines = markdown.splitlines()
    assert lines[0].split("|")[1].strip() == "run"
    assert "optimizer.learning_rate" in lines[0] and "model.size" in lines[0]
    assert lines[1].startswith("| ---")
    assert lines[2].split("|")[1].strip() == "straight"
    assert "12/12" in lines[3] and "0.003" in lines[3]
    records = list(csv.DictReader(io.StringIO(results.format_report(rows, "csv"))))
    assert [r["run"] for r in records] == ["straight", "resumed"]
    assert records[1]["config.optimizer.learning_rate"] == "0.003"
    assert float(records[1]["eval/loss"]) == pytest.approx(rows[1].metrics["eval/loss"].final)
    parsed = json.loads(results.format_report(rows, "json"))
    assert parsed[0]["best_eval/loss_step"] == rows[0].metrics["eval/loss"].best_step
    assert parsed[0]["config.model.size"] == "tiny"
    with pytest.raises(ValueError, match="markdown"):
        results.format_report(rows, "html")


def test_odd_workdirs_are_reported_not_raised(runs, tmp_path):
    stopped = results.load_run(runs["stopped"])
    assert (stopped.status, stopped.last_step) == (results.RUNNING, 7)  # Just written.
    old = time.time() - 3600
    for path in glob.glob(os.path.join(runs["stopped"], "events.out.tfevents.*")):
        os.utime(path, (old, old))
    stopped = results.load_run(runs["stopped"])
    assert stopped.status == results.STOPPED and "last written 1:00:" in stopped.detail

    # A file still being written: its last record is cut short.
    partial = tmp_path / "partial"
    shutil.copytree(runs["straight"], partial, ignore=shutil.ignore_patterns("checkpoints"))
    (events,) = glob.glob(str(partial / "events.out.tfevents.*"))
    with open(events, "r+b") as f:
        f.truncate(os.path.getsize(events) * 2 // 3 + 5)  # Mid-record, a few steps short.
    partial_run = results.load_run(str(partial))
    assert partial_run.status == results.RUNNING
    assert 3 <= partial_run.last_step < 12
    steps = [p.step for p in partial_run.scalars["train/loss"]]
    assert steps == list(range(1, len(steps) + 1))

    (tmp_path / "empty").mkdir()
    (tmp_path / "config_only").mkdir()
    shutil.copy(os.path.join(runs["straight"], "config.json"), tmp_path / "config_only")
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "thesis.tex").write_text("precious")
    (tmp_path / "a_file").write_text("x")
    odd = {
        "empty": results.EMPTY,
        "config_only": results.EMPTY,
        "thesis": results.NOT_A_RUN,
        "a_file": results.NOT_A_RUN,
        "nowhere": results.MISSING,
    }
    loaded = [results.load_run(str(tmp_path / name)) for name in odd]
    assert [r.status for r in loaded] == list(odd.values())
    assert all(r.detail for r in loaded)
    rows = results.summarize([results.load_run(runs["straight"]), *loaded])
    for fmt in results.FORMATS:
        text = results.format_report(rows, fmt)
        assert "nowhere" in text and "no such directory" in text


def test_plot_draws_each_run_on_shared_axes(runs, tmp_path):
    import matplotlib.image

    loaded = [results.load_run(w) for w in (runs["straight"], runs["resumed"], "/nonexistent")]
    path = str(tmp_path / "curves.png")
    figure = plot.plot_runs(loaded, path, metric="eval/perplexity", smoothing=0.6)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(path).shape == (480, 1200, 4)
    # Two runs with data x (train loss, eval loss, eval perplexity); the missing run draws nothing.
    drawn = plot.curves(figure)
    assert len(drawn) == 6
    assert sum(c.endswith("|eval/perplexity") for c in drawn) == 2
    assert any(c.startswith("optimizer.learning_rate=0.003") or "0.003" in c for c in drawn)
    loss_axis, metric_axis = figure.axes
    assert len([ln for ln in loss_axis.get_lines() if ln.get_gid()]) == 4
    assert len([ln for ln in metric_axis.get_lines() if ln.get_gid()]) == 2


def test_smoothing_matches_tensorboard():
    assert plot.smooth([1.0, 2.0, 3.0], 0.5) == pytest.approx([1.0, 5 / 3, 2.125 / 0.875])
    assert plot.smooth([1.0, 2.0, 3.0], 0.0) == [1.0, 2.0, 3.0]
    assert plot.smooth([4.0, 4.0], 0.9) == [4.0, 4.0]
    with pytest.raises(ValueError, match="smoothing"):
        plot.smooth([1.0], 1.0)


@pytest.mark.parametrize(
    "tag, goal",
    [
        ("eval/loss", "min"),
        ("eval/perplexity", "min"),
        ("eval/accuracy", "max"),
        ("eval/f1", "max"),
        ("eval/exact_match", "max"),
        ("eval/rouge1", "max"),
        ("eval/rougeLsum", "max"),
        ("eval/bleu", "max"),
        ("train/tokens_per_second", None),
        ("eval/f1/spam", "max"),  # Per-class metrics: the part before the class name.
        ("eval/precision/ham", "max"),
        ("eval/examples", None),
    ],
)
def test_metric_goal(tag, goal):
    assert results.metric_goal(tag) == goal


def test_dataframe(runs, monkeypatch):
    rows = results.load_scalars(runs["resumed"])
    frame = results.to_dataframe(rows)
    assert list(frame.columns) == ["tag", "step", "value", "wall_time"]
    assert len(frame) == len(rows)
    assert frame[frame.tag == "train/loss"].step.is_unique
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="ptjax\\[report\\]"):
        results.to_dataframe(rows)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        results.load_scalars("/nowhere")


def test_script(runs, tmp_path):
    png = tmp_path / "out.png"
    command = [sys.executable, os.path.join(REPO, "scripts", "report.py")]
    command += [runs["straight"], runs["resumed"], str(tmp_path / "nowhere")]
    command += ["--format=json", f"--plot={png}", "--plot_metric=eval/accuracy"]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    parsed = json.loads(done.stdout)
    assert [r["status"] for r in parsed] == ["complete", "complete", "missing"]
    assert "6 curves" in done.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_the_asked_config_fields_when_not_differing():
    runs = [
        results.Run("a", "complete", "", {}, {"task": "x", "seed": 1}, 1.0, 1),
        results.Run("b", "complete", "", {}, {"task": "y", "seed": 2}, 1.0, 1),
    ]
    assert list(results.summarize(runs, [])[0].config) == ["seed", "task"]
    only = results.summarize(runs, [], ["task"], differing=False)
    assert [list(r.config) for r in only] == [["task"], ["task"]]
