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

# Reaches into other modules' private names still in the code (2026-12-03: 38, from 53); the
# count may only fall.
PRIVATE_REACHES_LEFT = 38


def test_no_import_cycles():
    assert code_shape.cycles(code_shape.graph()) == []


def test_layers_are_kept():
    assert code_shape.layer_breaches(code_shape.graph()) == []


def test_the_checker_finds_a_cycle_and_a_breach():
    edges = {
        "ptjax.models.gpt": {"ptjax.train.steps"},
        "ptjax.train.steps": {"ptjax.models.gpt"},
        "ptjax.data.pipeline": set(),
    }
    assert code_shape.cycles(edges) == [["ptjax.models.gpt", "ptjax.train.steps"]]
    assert code_shape.layer_breaches(edges) == ["ptjax.models.gpt -> ptjax.train.steps"]


def test_private_reaches_do_not_grow():
    reaches = code_shape.private_reaches()
    assert len(reaches) <= PRIVATE_REACHES_LEFT, reaches
