"""Metrics of decoded text against references, as sums that add up across processes.

Each metric turns (predictions, references) into a vector of sums (`sums`), which shards of the
eval set (processes, batches) add, and the sums into its scores (`scores`), so a split scored in
pieces gets the score of the whole:

- `bleu`: sacrebleu's corpus BLEU with its standard 13a tokenisation, from BLEU's sufficient
  statistics (n-gram matches and totals, hypothesis and reference lengths); the first
  reference of each example.
- `rouge`: ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F-measures (Google's `rouge-score`, Porter
  stemming, its default tokeniser), averaged over examples, x 100 like T5's evaluation. For
  ROUGE-Lsum, texts are split into sentences at newlines where they have any (CNN/DailyMail's
  highlights do), else after '.', '!' or '?' followed by a space. Best over references.
- `squad`: SQuAD v1.1 exact match and F1 (`ptjax.evaluation.squad`, the one implementation the
  extractive QA task uses too), x 100, best over the references (a question's answers).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

import numpy as np

from ptjax.evaluation import squad

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@dataclasses.dataclass(frozen=True)
class TextMetric:
    """A metric over decoded texts: score names, sums of one shard, scores from summed sums."""

    names: tuple[str, ...]
    sums: Callable[[Sequence[str], Sequence[Sequence[str]]], np.ndarray]
    scores: Callable[[np.ndarray], dict[str, float]]


def _bleu():
    from sacrebleu.metrics import BLEU

    return BLEU()


def bleu_sums(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    bleu = _bleu()
    stats = np.zeros(2 + 2 * bleu.max_ngram_order, np.float64)
    if predictions:
        firsts = [refs[0] for refs in references]
        stats += np.asarray(bleu._extract_corpus_statistics(list(predictions), [firsts])).sum(0)
    return stats


def bleu_scores(sums: np.ndarray) -> dict[str, float]:
    stats = [int(round(x)) for x in sums]
    return {"bleu": float(_bleu()._compute_score_from_stats(stats).score)}


def sentences(text: str) -> list[str]:
    """ROUGE-Lsum's sentence split (module docstring)."""
    parts = text.split("\n") if "\n" in text else _SENTENCE_END.split(text)
    return [p.strip() for p in parts if p.strip()]


def rouge_sums(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """[count, sum of F of each ROUGE_TYPES]."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    sums = np.zeros(1 + len(ROUGE_TYPES), np.float64)
    for prediction, refs in zip(predictions, references, strict=True):
        best = np.zeros(len(ROUGE_TYPES))
        for reference in refs:
            # rougeLsum reads sentences from newlines; the other types ignore them.
            got = scorer.score("\n".join(sentences(reference)), "\n".join(sentences(prediction)))
            best = np.maximum(best, [got[t].fmeasure for t in ROUGE_TYPES])
        sums += np.concatenate([[1.0], best])
    return sums


def rouge_scores(sums: np.ndarray) -> dict[str, float]:
    count = max(sums[0], 1.0)
    return {t: 100.0 * float(s) / count for t, s in zip(ROUGE_TYPES, sums[1:], strict=True)}


def squad_sums(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """[count, sum of exact match, sum of F1]."""
    sums = np.zeros(3, np.float64)
    for prediction, refs in zip(predictions, references, strict=True):
        sums += (1.0, squad.exact_match(prediction, refs), squad.f1(prediction, refs))
    return sums


def squad_scores(sums: np.ndarray) -> dict[str, float]:
    count = max(sums[0], 1.0)
    return {"exact_match": 100.0 * sums[1] / count, "f1": 100.0 * sums[2] / count}


METRICS: dict[str, TextMetric] = {
    "bleu": TextMetric(("bleu",), bleu_sums, bleu_scores),
    "rouge": TextMetric(ROUGE_TYPES, rouge_sums, rouge_scores),
    "squad": TextMetric(("exact_match", "f1"), squad_sums, squad_scores),
}


def score(
    metric: str, predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """The scores of one metric over a whole set (no sharding)."""
    m = METRICS[metric]
    return m.scores(m.sums(predictions, references))
