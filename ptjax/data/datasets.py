"""What ptjax knows of each dataset by name (REGISTRY): its fields, the text put before its
inputs, whether it is read as QA, the metrics its evals report; and the language names pair
features stand for. One registry for the pipelines (encoder_pipeline, seq2seq_pipeline, qa),
the tasks, ptjax.run and the tools; no TensorFlow here.

A dataset not listed takes the schema's keys (dataset.text_key, seq2seq.inputs_key, ...) or,
for text pairs, its builder's supervised keys.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PairFields:
    """Features holding the inputs and targets texts, and the text put before every input."""

    inputs: str
    targets: str
    prefix: str


@dataclasses.dataclass(frozen=True)
class DatasetFacts:
    """What ptjax knows of one dataset: its fields for the task it serves and how it is scored."""

    text_fields: tuple[str, str] | None = None  # Classification: (text, text_b or '').
    pair: PairFields | None = None  # Text pairs: (inputs, targets) features and inputs prefix.
    qa: bool = False  # SQuAD-style QA (read by ptjax.data.qa); as text pairs "question: ... ->".
    metrics: tuple[str, ...] = ()  # Text metrics of seq2seq evals when seq2seq.metrics is ''.


def _classification(text: str, text_b: str = "") -> DatasetFacts:
    return DatasetFacts(text_fields=(text, text_b))


def _summarization(inputs: str, targets: str) -> DatasetFacts:
    return DatasetFacts(pair=PairFields(inputs, targets, "summarize: "), metrics=("rouge",))


_QA = DatasetFacts(qa=True, metrics=("squad",))

# Datasets by base name (no version). The label of every classification set is 'label'; a
# dataset.text_key / text_b_key / seq2seq.inputs_key / targets_key other than the schema default
# overrides the fields here.
REGISTRY: dict[str, DatasetFacts] = {
    "imdb_reviews": _classification("text"),
    "ag_news_subset": _classification("description"),  # text_b_key='title' adds the headline.
    "glue/cola": _classification("sentence"),
    "glue/sst2": _classification("sentence"),
    "glue/mrpc": _classification("sentence1", "sentence2"),
    "glue/qqp": _classification("question1", "question2"),
    "glue/stsb": _classification("sentence1", "sentence2"),
    "glue/mnli": _classification("premise", "hypothesis"),
    "glue/mnli_matched": _classification("premise", "hypothesis"),
    "glue/mnli_mismatched": _classification("premise", "hypothesis"),
    "glue/qnli": _classification("question", "sentence"),
    "glue/rte": _classification("sentence1", "sentence2"),
    "glue/wnli": _classification("sentence1", "sentence2"),
    "glue/ax": _classification("premise", "hypothesis"),
    "ptjax_en_es": DatasetFacts(pair=PairFields("en", "es", "translate English to Spanish: ")),
    "seq2seq_files": DatasetFacts(pair=PairFields("inputs", "targets", "")),
    "cnn_dailymail": _summarization("article", "highlights"),
    "xsum": _summarization("document", "summary"),
    # Fields from the builders' supervised keys, no prefix:
    "gigaword": DatasetFacts(metrics=("rouge",)),
    "multi_news": DatasetFacts(metrics=("rouge",)),
    "samsum": DatasetFacts(metrics=("rouge",)),
    "billsum": DatasetFacts(metrics=("rouge",)),
    "squad": _QA,
    "qa_files": _QA,
    "ptjax_qa_demo": _QA,
}
_UNKNOWN = DatasetFacts()


def base_name(name: str) -> str:
    """A TFDS name without its version: 'glue/sst2:2.0.0' -> 'glue/sst2'."""
    return name.split(":")[0]


def facts(name: str) -> DatasetFacts:
    """What the registry knows of dataset `name` (any version); nothing for others."""
    return REGISTRY.get(base_name(name), _UNKNOWN)


def is_qa(name: str) -> bool:
    """Whether `name` is a SQuAD-style QA set, read as question + context -> answer."""
    return facts(name).qa


def default_metrics(name: str) -> tuple[str, ...]:
    """Text metrics of a seq2seq eval by dataset: its own, else BLEU."""
    return facts(name).metrics or ("bleu",)


# Names of the language codes of translation pairs, for "translate X to Y: " prefixes.
LANGUAGE_NAMES = {
    "cs": "Czech",
    "de": "German",
    "en": "English",
    "es": "Spanish",
    "et": "Estonian",
    "fi": "Finnish",
    "fr": "French",
    "gu": "Gujarati",
    "hi": "Hindi",
    "kk": "Kazakh",
    "lt": "Lithuanian",
    "lv": "Latvian",
    "ro": "Romanian",
    "ru": "Russian",
    "tr": "Turkish",
    "zh": "Chinese",
}


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code, code)
