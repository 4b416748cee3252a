"""BestParams keeps the parameters of the best eval so far, and a resumed run remembers it."""

import json

import numpy as np
import pytest

from ptjax.train.checkpoint import BestParams, restore_params


def test_best_params_track_improvements_and_survive_a_restart(tmp_path):
    directory = str(tmp_path / "best")
    best = BestParams(directory, "f1", "max")
    params = lambda v: {"w": np.full((2,), v, np.float32)}  # noqa: E731
    assert best.update(10, {"f1": 0.5}, params(1.0))
    assert not best.update(20, {"f1": 0.4}, params(2.0))  # Worse: kept the step-10 params.
    assert best.update(30, {"f1": 0.7}, params(3.0))  # Better again: replaces the record.
    assert not best.update(40, {"f1": float("nan")}, params(4.0))
    best.close()
    with open(tmp_path / "best" / "best.json") as f:
        assert json.load(f) == {"metric": "f1", "mode": "max", "value": 0.7, "step": 30}
    restored = restore_params(directory, {"w": np.zeros((2,), np.float32)})
    np.testing.assert_array_equal(restored["w"], [3.0, 3.0])
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["30", "best.json"]

    again = BestParams(directory, "f1", "max")  # A resumed run.
    assert (again.value, again.step) == (0.7, 30)
    assert not again.update(50, {"f1": 0.6}, params(5.0))
    with pytest.raises(KeyError, match="best_metric='f1'"):
        again.update(60, {"loss": 1.0}, params(6.0))
    again.close()

    lower = BestParams(str(tmp_path / "low"), "loss", "min")
    assert lower.update(1, {"loss": 2.0}, params(1.0))
    assert lower.update(2, {"loss": 1.0}, params(2.0))
    assert not lower.update(3, {"loss": 1.5}, params(3.0))
    lower.close()


def test_relative_directories_work_as_a_relative_workdir_does(tmp_path, monkeypatch):
    """Orbax wants absolute paths; `--workdir=runs/x` is relative to the current directory."""
    from ptjax.train.checkpoint import Checkpointer, restore_matching_params

    monkeypatch.chdir(tmp_path)
    params = {"w": np.full((2,), 7.0, np.float32)}
    best = BestParams("runs/x/best", "loss", "min")
    assert best.update(5, {"loss": 1.0}, params)
    best.close()
    assert (tmp_path / "runs" / "x" / "best" / "5").is_dir()
    restored = restore_matching_params("runs/x/best/5", {"w": np.zeros((2,), np.float32)})
    np.testing.assert_array_equal(restored.params["w"], [7.0, 7.0])
    assert str(Checkpointer("runs/x/checkpoints", keep=1).directory).startswith(str(tmp_path))
