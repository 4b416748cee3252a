"""Decoded-text metrics: ROUGE, BLEU and SQuAD EM/F1 against hand-computed values, and sums
of shards that give the score of the whole set."""

from __future__ import annotations

import numpy as np
import pytest

from ptjax.evaluation import text_metrics as tm


def test_rouge_against_hand_counted_overlaps():
    # 6 tokens each; shared unigrams the, the, cat, on, mat (5); bigrams the cat, on the,
    # the mat (3 of 5); longest common subsequence "the cat on the mat" (5).
    got = tm.score("rouge", ["the cat sat on the mat"], [["the cat was on the mat"]])
    assert got["rouge1"] == pytest.approx(100 * 5 / 6)
    assert got["rouge2"] == pytest.approx(100 * 3 / 5)
    assert got["rougeL"] == pytest.approx(100 * 5 / 6)
    assert got["rougeLsum"] == pytest.approx(100 * 5 / 6)


def test_rouge_lsum_reads_sentences_rouge_l_does_not():
    prediction = "The dog ran home. The cat sat down."
    reference = "the cat sat down\nthe dog ran home"  # Same sentences, other order.
    got = tm.score("rouge", [prediction], [[reference]])
    assert got["rougeLsum"] == pytest.approx(100.0) and got["rouge1"] == pytest.approx(100.0)
    assert got["rougeL"] == pytest.approx(50.0)  # LCS "the cat sat down": 4 of 8 tokens.
    assert tm.sentences("A b. C d? E\u00e9 f! g") == ["A b.", "C d?", "E\u00e9 f!", "g"]
    assert tm.sentences("one\n\ntwo. three") == ["one", "two. three"]


def test_rouge_stems_and_takes_the_best_reference():
    got = tm.score("rouge", ["floods hit towns"], [["nothing alike here", "flooding hits town"]])
    assert got["rouge1"] == pytest.approx(100.0)  # Porter stems: flood hit town.


def test_squad_metric_is_the_official_normalisation_best_over_answers():
    got = tm.score(
        "squad", ["The Eiffel Tower!", "in Paris"], [["Eiffel tower"], ["Lyon", "Paris"]]
    )
    assert got["exact_match"] == pytest.approx(50.0)  # "in paris" != "paris".
    assert got["f1"] == pytest.approx(100 * (1.0 + 2 * (1 / 2 * 1) / (1 / 2 + 1)) / 2)


@pytest.mark.parametrize("metric", ["bleu", "rouge", "squad"])
def test_sums_of_shards_give_the_score_of_the_whole(metric):
    predictions = ["En el principio creó Dios los cielos", "y la tierra estaba desordenada",
                   "Y dijo Dios: Sea la luz", "y fue la luz", "la luz"]  # fmt: skip
    references = [["En el principio creó Dios los cielos y la tierra"],
                  ["Y la tierra estaba desordenada y vacía"], ["Y dijo Dios: Sea la luz"],
                  ["Y vió Dios que la luz era buena"], ["luz"]]  # fmt: skip
    m = tm.METRICS[metric]
    whole = m.scores(m.sums(predictions, references))
    parts = [m.sums(predictions[i : i + 2], references[i : i + 2]) for i in (0, 2, 4)]
    assert m.scores(np.sum(parts, axis=0)) == pytest.approx(whole)
    assert set(whole) == set(m.names) and all(0 < v < 100 for v in whole.values())
    if metric == "bleu":
        from sacrebleu.metrics import BLEU

        expected = BLEU().corpus_score(predictions, [[r[0] for r in references]]).score
        assert whole["bleu"] == pytest.approx(expected)
    assert m.scores(m.sums([], [])) == pytest.approx({n: 0.0 for n in m.names})
