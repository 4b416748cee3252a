"""What ptjax knows of each dataset by name: its fields, the text put before its inputs, and
the language names its pair features stand for. One registry for the pipelines
(encoder_pipeline, seq2seq_pipeline), ptjax.run and the tools; no TensorFlow here.

A dataset not listed takes the schema's keys (dataset.text_key, seq2seq.inputs_key, ...) or,
for text pairs, its builder's supervised keys.
"""

from __future__ import annotations

import dataclasses

# (text_key, text_b_key) of TFDS catalogue datasets for the encoder tasks; the label is 'label'
# in all. A dataset.text_key / text_b_key other than the schema default overrides these.
CLASSIFICATION_FIELDS = {
    "imdb_reviews": ("text", ""),
    "ag_news_subset": ("description", ""),  # text_b_key='title' adds the headline.
    "glue/cola": ("sentence", ""),
    "glue/sst2": ("sentence", ""),
    "glue/mrpc": ("sentence1", "sentence2"),
    "glue/qqp": ("question1", "question2"),
    "glue/stsb": ("sentence1", "sentence2"),
    "glue/mnli": ("premise", "hypothesis"),
    "glue/mnli_matched": ("premise", "hypothesis"),
    "glue/mnli_mismatched": ("premise", "hypothesis"),
    "glue/qnli": ("question", "sentence"),
    "glue/rte": ("sentence1", "sentence2"),
    "glue/wnli": ("sentence1", "sentence2"),
    "glue/ax": ("premise", "hypothesis"),
}


@dataclasses.dataclass(frozen=True)
class PairFields:
    """Features holding the inputs and targets texts, and the text put before every input."""

    inputs: str
    targets: str
    prefix: str


# Text-pair datasets (seq2seq): their fields and input prefix.
PAIRS = {
    "ptjax_en_es": PairFields("en", "es", "translate English to Spanish: "),
    "seq2seq_files": PairFields("inputs", "targets", ""),
    "cnn_dailymail": PairFields("article", "highlights", "summarize: "),
    "xsum": PairFields("document", "summary", "summarize: "),
}
# SQuAD-style QA sets (read by ptjax.data.qa) as text to text: "question: ... context: ..." ->
# the first answer; evaluation scores against every answer.
QA_PAIR_DATASETS = ("squad", "qa_files", "ptjax_qa_demo")
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
