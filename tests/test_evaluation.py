"""Classification scores and SQuAD v1.1 EM/F1 against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptjax.evaluation import classification, squad

LABELS = np.array([0, 0, 1, 1, 2, 2, 2])
PREDS = np.array([0, 1, 1, 1, 2, 0, 1])


def test_confusion_matrix_and_scores_by_hand():
    cm = classification.confusion_matrix(LABELS, PREDS, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 1, 1]])
    s = classification.scores(cm, ["a", "b", "c"])
    assert s["accuracy"] == pytest.approx(4 / 7)
    assert [s[f"precision/{n}"] for n in "abc"] == pytest.approx([0.5, 0.5, 1.0])
    assert [s[f"recall/{n}"] for n in "abc"] == pytest.approx([0.5, 1.0, 1 / 3])
    assert [s[f"f1/{n}"] for n in "abc"] == pytest.approx([0.5, 2 / 3, 0.5])
    assert s["macro_f1"] == pytest.approx(5 / 9)
    assert s["macro_precision"] == pytest.approx(2 / 3)
    # (c*s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)) with t=[2,2,3], p=[2,4,1], c=4, s=7.
    assert s["mcc"] == pytest.approx(13 / np.sqrt(28 * 32))
    perfect = classification.scores(classification.confusion_matrix(LABELS, LABELS, 3))
    assert perfect["accuracy"] == perfect["macro_f1"] == perfect["mcc"] == 1.0


def test_never_predicted_absent_class_and_empty_input():
    cm = classification.confusion_matrix([0, 1, 2], [0, 0, 0], 4)
    s = classification.scores(cm)
    assert s["precision/1"] == 0.0 and s["f1/1"] == 0.0  # Never predicted: precision 0.
    assert s["precision/0"] == pytest.approx(1 / 3) and s["f1/0"] == pytest.approx(0.5)
    assert s["macro_f1"] == pytest.approx(0.5 / 3)  # Class 3 (absent everywhere) is left out.
    assert s["mcc"] == 0.0  # Constant predictions: undefined, reported as 0.
    empty = classification.scores(classification.confusion_matrix(np.zeros(0, int), [], 3))
    assert all(v == 0.0 for v in empty.values())
    with pytest.raises(ValueError, match="label_names"):
        classification.scores(cm, ["x"])


def test_weights_and_padding_count_zero():
    labels = np.concatenate([LABELS, [-1, 2, 1]])
    preds = np.concatenate([PREDS, [0, 0, 0]])
    weights = np.array([1] * 7 + [0, 0, 0])
    cm = classification.confusion_matrix(labels, preds, 3, weights)
    np.testing.assert_array_equal(cm, classification.confusion_matrix(LABELS, PREDS, 3))
    halves = classification.confusion_matrix(LABELS, PREDS, 3, np.full(7, 0.5))
    np.testing.assert_allclose(halves, 0.5 * np.asarray(cm))


def test_confusion_matrices_sum_across_devices():
    n = jax.local_device_count()
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 3, (2, n, 5))
    per_device = jax.pmap(
        lambda y, p: jax.lax.psum(classification.confusion_matrix(y, p, 3), "devices"),
        axis_name="devices",
    )(jnp.asarray(labels), jnp.asarray(preds))
    whole = classification.confusion_matrix(labels, preds, 3)
    np.testing.assert_array_equal(per_device[0], whole)
    assert float(whole.sum()) == n * 5


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The Denver Broncos!", "denver broncos"),
        ("  an   apple,  a pear and THE end. ", "apple pear and end"),
        ("Anaheim theatre", "anaheim theatre"),  # Articles only as whole words.
        ("the_cat", "thecat"),  # Punctuation goes first, so "the" is no longer a word.
        ("1,000 (approx.)", "1000 approx"),
    ],
)
def test_normalize_answer(text, expected):
    assert squad.normalize_answer(text) == expected


def test_exact_match_and_f1():
    assert squad.exact_match("the Denver Broncos", ["Denver Broncos", "Broncos"]) == 1.0
    assert squad.exact_match("Denver", ["Denver Broncos"]) == 0.0
    assert squad.f1("Broncos", ["Denver Broncos"]) == pytest.approx(2 / 3)
    # 3 of the gold's 11 normalised tokens: P = 1, R = 3/11, F1 = 6/14.
    gold = "Levi's Stadium in the San Francisco Bay Area at Santa Clara, California"
    assert squad.f1("Santa Clara, California", [gold]) == pytest.approx(6 / 14)
    assert squad.f1("Santa Clara, California", [gold, "Santa Clara"]) == pytest.approx(0.8)
    assert squad.f1("x b b", ["b b c"]) == pytest.approx(2 / 3)  # Token counts are clipped.
    assert squad.f1("the", ["a"]) == 0.0  # Both empty after normalisation: 0 in v1.1.
    assert squad.f1("x", []) == squad.exact_match("x", []) == 0.0


def test_evaluate_counts_missing_predictions_as_zero():
    answers = {"q1": ["Denver Broncos"], "q2": ["Santa Clara"], "q3": ["1990"]}
    predictions = {"q1": "The Denver Broncos", "q2": "Clara", "extra": "ignored"}
    result = squad.evaluate(answers, predictions)
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    assert result["count"] == 3 and result["missing"] == 1
    assert squad.evaluate({}, {})["f1"] == 0.0
