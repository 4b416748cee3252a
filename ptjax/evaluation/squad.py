"""SQuAD v1.1 exact match and token F1, as the official evaluation script computes them.

Answers are normalised (lower case, punctuation removed, articles a/an/the removed, whitespace
collapsed) before comparison, and each question scores the best over its gold answers. As in
v1.1, an empty normalised prediction or answer has F1 0 (v2.0's no-answer rule is not applied).
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (official order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _f1(prediction: str, ground_truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(pred_tokens), num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, ground_truths: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return max((float(pred == normalize_answer(g)) for g in ground_truths), default=0.0)


def f1(prediction: str, ground_truths: Sequence[str]) -> float:
    """Best bag-of-tokens F1 between the prediction and any gold answer, in [0, 1]."""
    return max((_f1(prediction, g) for g in ground_truths), default=0.0)


def evaluate(
    answers: Mapping[str, Sequence[str]], predictions: Mapping[str, str]
) -> dict[str, float]:
    """Percent exact match and F1 over every question of `answers` (question id -> gold texts).

    A question without a prediction scores 0, as in the official script; `missing` counts them.
    Predictions for unknown ids are ignored.
    """
    em_sum = f1_sum = 0.0
    missing = 0
    for qid, golds in answers.items():
        if qid not in predictions:
            missing += 1
            continue
        em_sum += exact_match(predictions[qid], golds)
        f1_sum += f1(predictions[qid], golds)
    count = len(answers)
    return {
        "exact_match": 100.0 * em_sum / count if count else 0.0,
        "f1": 100.0 * f1_sum / count if count else 0.0,
        "count": float(count),
        "missing": float(missing),
    }
