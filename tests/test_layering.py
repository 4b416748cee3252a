"""The shape of ptjax's imports (scripts/code_shape.py reads them with ast): no import cycles,
function-level imports included, and the layers of STYLE.md: models import neither data, tasks
nor train; data imports neither models nor train; decoding imports neither data pipelines nor
train."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location(
    "code_shape", os.path.join(ROOT, "scripts", "code_shape.py")
)
code_shape = importlib.util.module_from_spec(spec)
spec.loader.exec_module(code_shape)


def test_no_import_cycles():
    assert code_shape.cycles(code_shape.graph()) == []


def test_layers_are_kept():
    assert code_shape.layer_breaches(code_shape.graph()) == []


def test_the_checker_finds_a_cycle_and_a_breach():
    edges = {
        "ptjax.models.gpt": {"ptjax.train.steps"},
        "ptjax.train.steps": {"ptjax.models.gpt"},
        "ptjax.data.lm_pipeline": set(),
    }
    assert code_shape.cycles(edges) == [["ptjax.models.gpt", "ptjax.train.steps"]]
    assert code_shape.layer_breaches(edges) == ["ptjax.models.gpt -> ptjax.train.steps"]


def test_no_module_reaches_into_another_modules_private_names():
    assert code_shape.private_reaches() == []


def test_no_task_name_is_tested_outside_the_tasks():
    assert code_shape.task_name_tests() == []


def test_the_checker_finds_task_name_tests(tmp_path):
    for folder in ("ptjax/tasks", "scripts"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "ptjax/tasks/__init__.py").write_text(
        'TASKS: dict = {"seq2seq": 1, "masked_lm": 2}'
    )
    (tmp_path / "ptjax/tasks/seq2seq.py").write_text('ok = task == "seq2seq"')
    (tmp_path / "ptjax/tool.py").write_text('a = 1\nif t in ("masked_lm", "x"):\n    pass\n')
    (tmp_path / "scripts/run.py").write_text('flag = config.task != "seq2seq"\nname = "seq2seq"')
    assert code_shape.task_name_tests(str(tmp_path)) == ["ptjax/tool.py:2", "scripts/run.py:1"]
