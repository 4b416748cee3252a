"""Extractive QA post-processing: start/end logits of every window -> one answer text per question.

BERT's n-best rule (run_squad `write_predictions`, SQuAD v1.1): in each window take the n_best
highest start and end logits; a pair (s, e) is a candidate when both are context tokens of the
window, s <= e, e - s + 1 <= max_answer_len, and the window is s's max-context window; its score
is start_logit[s] + end_logit[e]. The best candidate over all windows of a question gives the
answer `context[offsets[s][0]:offsets[e][1]]`; a question without a candidate gets "".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ptjax.evaluation import squad

if TYPE_CHECKING:
    from ptjax.data.qa import QAExample, QAFeature


def _top(logits: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest logits, largest first; ties keep the lower index first."""
    return np.argsort(-logits, kind="stable")[:n]


def best_span(
    feature: QAFeature,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    *,
    n_best: int,
    max_answer_len: int,
) -> tuple[float, int, int] | None:
    """(score, start token, end token) of a feature's best valid span, or None.

    start_logits, end_logits: [length >= len(feature.input_ids)] of this feature's row; logits
    beyond the feature's tokens (padding) are ignored.
    """
    length = len(feature.input_ids)
    start_logits = np.asarray(start_logits, np.float32)[:length]
    end_logits = np.asarray(end_logits, np.float32)[:length]
    in_context = feature.offsets[:, 0] >= 0
    best = None
    for s in _top(start_logits, n_best):
        if not (in_context[s] and feature.max_context[s]):
            continue
        for e in _top(end_logits, n_best):
            if not in_context[e] or e < s or e - s + 1 > max_answer_len:
                continue
            score = float(start_logits[s] + end_logits[e])
            if best is None or score > best[0]:
                best = (score, int(s), int(e))
    return best


def predict_answers(
    examples: Sequence[QAExample],
    features: Sequence[QAFeature],
    start_logits: Sequence[np.ndarray] | np.ndarray,
    end_logits: Sequence[np.ndarray] | np.ndarray,
    *,
    n_best: int,
    max_answer_len: int,
) -> dict[str, str]:
    """Example id -> predicted answer text, for every example (best span over its windows).

    start_logits, end_logits: per feature (same order as `features`) a row of logits, e.g. an
    array [num_features, seq_len]; rows may be longer than the feature (padding is ignored).
    """
    if len(start_logits) != len(features) or len(end_logits) != len(features):
        raise ValueError(
            f"Got {len(start_logits)} start and {len(end_logits)} end logit rows for "
            f"{len(features)} features; give one row per feature."
        )
    best: dict[int, tuple[float, int, int, int]] = {}  # example index -> (score, feature, s, e)
    for index, feature in enumerate(features):
        span = best_span(
            feature,
            start_logits[index],
            end_logits[index],
            n_best=n_best,
            max_answer_len=max_answer_len,
        )
        if span is None:
            continue
        current = best.get(feature.example_index)
        if current is None or span[0] > current[0]:
            best[feature.example_index] = (span[0], index, span[1], span[2])
    predictions = {}
    for example_index, example in enumerate(examples):
        if example_index not in best:
            predictions[example.id] = ""
            continue
        _, index, s, e = best[example_index]
        offsets = features[index].offsets
        predictions[example.id] = example.context[offsets[s, 0] : offsets[e, 1]]
    return predictions


def score(examples: Sequence[QAExample], predictions: Mapping[str, str]) -> dict[str, float]:
    """SQuAD v1.1 exact_match and f1 in percent over `examples`, with count (and missing), as
    `ptjax.evaluation.squad.evaluate` computes them."""
    answers = {example.id: list(example.answers) for example in examples}
    return squad.evaluate(answers, predictions)
