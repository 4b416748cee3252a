"""Extractive QA data, SQuAD v1.1 style: examples, BERT's windowed features, and batches.

Examples (`QAExample`) come from the TFDS catalogue's `squad` (any TFDS dataset with its features
id / question / context / answers{text, answer_start}, prepared under data_dir: ptjax never
downloads), from a user's JSONL files (`qa_files`: one object per line, {"id", "question",
"context", "answers": [{"text", "answer_start"}]}; splits train / validation / test from
dataset.train_files / eval_files / test_files), or from the bundled Bible corpus
(`ptjax_qa_demo`, `make_learnable_qa`). Every answer must be found at its answer_start in the
context; one that is not is an error naming the example.

Features follow BERT's run_squad: `[CLS] question [SEP] window [SEP]`, the question cut to
qa.max_query_len tokens, the context cut into windows of the remaining seq_len - 3 - len(question)
tokens whose starts are qa.doc_stride tokens apart (the last window ends at the context's end).
token_type_ids are 0 on [CLS] question [SEP] and 1 on the window and its [SEP]. The targets are
the token positions of the first answer when it lies wholly inside the window, else 0/0 ([CLS]).
Token spans come from the tokenizer's character offsets, so a span of tokens maps back to text.
Host-side metadata (character offsets, max-context flags) stays with the features for
`ptjax.evaluation.qa_postprocess`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np

from ptjax.data import corpora, files, iterators, mlm
from ptjax.data.builders import labeled
from ptjax.data.builders import text as text_builders
from ptjax.data.tf_setup import import_tf
from ptjax.data.tokenizer import Tokenizer

tf = import_tf()

import tensorflow_datasets as tfds  # noqa: E402  (after import_tf: TF must be set up first)

QA_KEYS = (
    "input_ids",
    "token_type_ids",
    "attention_mask",
    "start_positions",
    "end_positions",
    "weights",
)
# Datasets read here rather than through TFDS; any other name is a TFDS catalogue dataset.
LOCAL_QA_DATASETS = ("qa_files", "ptjax_qa_demo")
SQUAD_FEATURES = ("id", "question", "context", "answers")
QA_FILES_SPLITS = {"train": "train_files", "validation": "eval_files", "test": "test_files"}
# ptjax_qa_demo: questions per passage of the ptjax_bible split, and the generator's seed.
DEMO_SPLITS = {"train": (2, 0), "validation": (1, 1)}


@dataclasses.dataclass(frozen=True)
class QAExample:
    """One question about one context, with its gold answers (SQuAD v1.1 has one or more)."""

    id: str
    question: str
    context: str
    answers: tuple[str, ...]  # Gold answer texts, the first is the training target.
    answer_starts: tuple[int, ...]  # Character index of each answer in `context`.


@dataclasses.dataclass(frozen=True, eq=False)
class QAFeature:
    """One window of one example as model input, with what post-processing needs.

    `offsets[i]` is the (start, end) character span in the example's context of token i when it
    is a context token, (-1, -1) for [CLS], the question and [SEP]s. `max_context[i]` is True
    where this window gives token i its most context of all windows holding it (BERT's
    `_check_is_max_context`); answers may only start at such tokens.
    """

    example_index: int  # Index into the examples the features were made from.
    window_start: int  # Index of the window's first token among the context's tokens.
    input_ids: np.ndarray  # [length] int32, no padding.
    context_offset: int  # Position of the window's first token in input_ids.
    offsets: np.ndarray  # [length, 2] int32
    max_context: np.ndarray  # [length] bool
    start_position: int  # Answer's first token in input_ids, 0 ([CLS]) if not in the window.
    end_position: int  # Answer's last token (inclusive), 0 if not in the window.

    @property
    def token_type_ids(self) -> np.ndarray:
        """[length] int32: 0 on [CLS] question [SEP], 1 on the window and its [SEP]."""
        types = np.ones(len(self.input_ids), np.int32)
        types[: self.context_offset] = 0
        return types


def check_answers(example: QAExample, where: str) -> None:
    """Raises DataError (naming `where` and the example) unless each answer is at its start."""
    if not example.answers:
        raise files.DataError(f"{where}: example {example.id!r} has no answers.")
    if len(example.answers) != len(example.answer_starts):
        raise files.DataError(
            f"{where}: example {example.id!r} has {len(example.answers)} answer texts but "
            f"{len(example.answer_starts)} answer_starts."
        )
    for text, start in zip(example.answers, example.answer_starts, strict=True):
        found = example.context[start : start + len(text)] if start >= 0 else ""
        if not text or found != text:
            raise files.DataError(
                f"{where}: example {example.id!r}: answer {text!r} is not at answer_start={start} "
                f"of its context (the context there reads {found!r})."
            )


# ----------------------------------------------------------------------------------------------
# Reading examples.


def _text(value: object, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise files.DataError(
            f"{where}: field {key!r} is {type(value).__name__}, expected a string."
        )
    return value


def _record_example(record: dict, where: str) -> QAExample:
    """A QAExample from one JSONL object; raises DataError naming `where` (file:line)."""
    for key in ("id", "question", "context", "answers"):
        if record.get(key) is None:
            raise files.DataError(f"{where}: missing field {key!r}.")
    qid = record["id"]
    if isinstance(qid, bool) or not isinstance(qid, (str, int)):
        raise files.DataError(f"{where}: id {qid!r} is not a string or integer.")
    answers = record["answers"]
    if not isinstance(answers, list) or not answers:
        raise files.DataError(
            f"{where}: 'answers' must be a non-empty list of {{'text', 'answer_start'}} objects."
        )
    texts, starts = [], []
    for answer in answers:
        start = answer.get("answer_start") if isinstance(answer, dict) else None
        if isinstance(start, bool) or not isinstance(start, int):
            raise files.DataError(
                f"{where}: answer {answer!r} needs 'text' (string) and 'answer_start' (integer)."
            )
        texts.append(_text(answer.get("text"), "answers.text", where))
        starts.append(start)
    example = QAExample(
        id=str(qid),
        question=_text(record["question"], "question", where),
        context=_text(record["context"], "context", where),
        answers=tuple(texts),
        answer_starts=tuple(starts),
    )
    check_answers(example, where)
    return example


def read_qa_jsonl(paths: Sequence[str]) -> list[QAExample]:
    """Examples of JSONL files, one object per non-blank line; errors name the file and line."""
    examples, seen = [], {}
    for path in paths:
        if os.path.splitext(path)[1].lower() not in (".jsonl", ".json"):
            raise files.DataError(
                f"{path}: qa_files reads JSONL (.jsonl), one object per line with id, question, "
                "context and answers: [{text, answer_start}]."
            )
        for line, record in labeled.read_labeled(path):
            where = f"{path}:{line}"
            example = _record_example(record, where)
            if example.id in seen:
                raise files.DataError(
                    f"{where}: id {example.id!r} was already used at {seen[example.id]}."
                )
            seen[example.id] = where
            examples.append(example)
    return examples


def _tfds_examples(
    config_dataset: ml_collections.ConfigDict, split: str, data_dir: str, shard: tuple[int, int]
) -> list[QAExample]:
    """This process's examples of a TFDS dataset with SQuAD's features (prepared, not fetched)."""
    builder = corpora.get_builder(config_dataset, data_dir=data_dir)
    name = config_dataset.name
    features = builder.info.features
    missing = [key for key in SQUAD_FEATURES if key not in features]
    if missing:
        raise files.DataError(
            f"dataset.name={name!r} has no features {missing}; extractive QA reads SQuAD's "
            f"{list(SQUAD_FEATURES)} (answers with text and answer_start)."
        )
    if builder.info.splits:  # Empty only for mocked builders; then any split is accepted.
        corpora.split_num_examples(builder, split)
    process_index, process_count = shard
    subsplit = (
        split if process_count == 1 else tfds.even_splits(split, n=process_count)[process_index]
    )
    ds = builder.as_dataset(
        split=subsplit, shuffle_files=False, read_config=tfds.ReadConfig(try_autocache=False)
    )
    examples = []
    for record in ds.as_numpy_iterator():
        answers = record["answers"]
        example = QAExample(
            id=record["id"].decode("utf-8"),
            question=record["question"].decode("utf-8"),
            context=record["context"].decode("utf-8"),
            answers=tuple(t.decode("utf-8") for t in answers["text"]),
            answer_starts=tuple(int(s) for s in answers["answer_start"]),
        )
        check_answers(example, f"dataset {name!r} split {split!r}")
        examples.append(example)
    return examples


def _shard(items: list, shard: tuple[int, int]) -> list:
    """The process's even, contiguous slice of `items`."""
    index, count = shard
    return items[len(items) * index // count : len(items) * (index + 1) // count]


def load_examples(
    config_dataset: ml_collections.ConfigDict,
    split: str,
    *,
    data_dir: str,
    shard: tuple[int, int] = (0, 1),
) -> list[QAExample]:
    """This process's examples of `split`: an even contiguous shard, in the split's order."""
    process_index, process_count = shard
    if not 0 <= process_index < process_count:
        raise ValueError(f"shard={shard}: need 0 <= process_index < process_count.")
    name = config_dataset.name
    if name == "qa_files":
        key = QA_FILES_SPLITS.get(split)
        if key is None:
            raise files.DataError(
                f"dataset.name='qa_files' has splits {sorted(QA_FILES_SPLITS)} (from "
                f"{', '.join('dataset.' + k for k in QA_FILES_SPLITS.values())}); got {split!r}."
            )
        patterns = files.as_list(config_dataset[key])
        if not patterns:
            raise files.DataError(
                f"Split {split!r} of dataset 'qa_files' needs dataset.{key} (JSONL paths or globs)."
            )
        examples = read_qa_jsonl(files.resolve(patterns, key))
    elif name == "ptjax_qa_demo":
        examples = demo_examples(split)
    else:
        return _tfds_examples(config_dataset, split, data_dir, shard)
    if not examples:
        raise files.DataError(f"Split {split!r} of dataset {name!r} has no examples.")
    return _shard(examples, shard)


# ----------------------------------------------------------------------------------------------
# A learnable demo set from the Bible.

_WORD = re.compile(r"[A-Za-z]+")
_MIN_KEY_LEN = 3  # Question words are at least this long ("the", not "a").


def make_learnable_qa(texts: Sequence[str], num_examples: int, seed: int) -> list[QAExample]:
    """`num_examples` questions "What word comes after X?" about `texts`, answered by the word
    that follows X, where X is a word of 3+ letters occurring once in its text (unquoted, so it
    tokenises as in the text).

    Texts are used in turn (text k % n for example k) and each text's candidate words in a
    seeded random order, so the set is deterministic from `seed`, and every answer sits at its
    answer_start. Texts without a candidate are skipped.
    """
    if num_examples < 0:
        raise ValueError(f"num_examples={num_examples} must be >= 0.")
    rng = np.random.default_rng(seed)
    usable = []  # (text, [(key word, answer word match)]) for texts with candidates.
    for text in texts:
        words = list(_WORD.finditer(text))
        counts: dict[str, int] = {}
        for word in words:
            counts[word.group()] = counts.get(word.group(), 0) + 1
        candidates = [
            (key.group(), answer)
            for key, answer in zip(words[:-1], words[1:], strict=True)
            if len(key.group()) >= _MIN_KEY_LEN and counts[key.group()] == 1
        ]
        if candidates:
            usable.append((text, [candidates[i] for i in rng.permutation(len(candidates))]))
    if num_examples and not usable:
        raise ValueError("No text has a word of 3+ letters that occurs once and has a successor.")
    examples = []
    for k in range(num_examples):
        text, candidates = usable[k % len(usable)]
        key, answer = candidates[(k // len(usable)) % len(candidates)]
        examples.append(
            QAExample(
                id=f"qa_demo-{seed}-{k}",
                question=f"What word comes after {key}?",
                context=text,
                answers=(answer.group(),),
                answer_starts=(answer.start(),),
            )
        )
    return examples


def demo_examples(split: str) -> list[QAExample]:
    """`ptjax_qa_demo`: learnable questions on ptjax_bible's passages of the same split (train:
    2 per passage, validation: 1), deterministic."""
    if split not in DEMO_SPLITS:
        raise files.DataError(
            f"Dataset 'ptjax_qa_demo' has splits {sorted(DEMO_SPLITS)}; got {split!r}."
        )
    per_passage, seed = DEMO_SPLITS[split]
    validation = split == "validation"
    passages = [
        p
        for i, p in enumerate(text_builders.bible_passages())
        if text_builders.is_holdout(i) == validation
    ]
    return make_learnable_qa(passages, per_passage * len(passages), seed)


# ----------------------------------------------------------------------------------------------
# Features.


def _check_lengths(seq_len: int, max_query_len: int) -> None:
    if seq_len - max_query_len - 3 < 1:
        raise ValueError(
            f"seq_len={seq_len} leaves no room for context after [CLS], qa.max_query_len="
            f"{max_query_len} question tokens and two [SEP]s; raise seq_len or lower "
            "qa.max_query_len."
        )


def _windows(num_tokens: int, max_len: int, stride: int) -> list[tuple[int, int]]:
    """(start, length) of BERT's doc spans: starts `stride` apart, the last reaches the end."""
    windows, start = [], 0
    while True:
        length = min(max_len, num_tokens - start)
        windows.append((start, length))
        if start + length >= num_tokens:
            return windows
        start += min(length, stride)


def _best_windows(windows: list[tuple[int, int]], num_tokens: int) -> np.ndarray:
    """[num_tokens] int: for each context token, the window giving it the most context.

    Score of token i in window (start, length): min(left, right context) + 0.01 * length; ties
    go to the earlier window, as in BERT's `_check_is_max_context`.
    """
    best = np.full(num_tokens, -1)
    best_score = np.full(num_tokens, -np.inf)
    for w, (start, length) in enumerate(windows):
        position = np.arange(length)
        score = np.minimum(position, length - 1 - position) + 0.01 * length
        better = score > best_score[start : start + length]
        best[start : start + length][better] = w
        best_score[start : start + length][better] = score[better]
    return best


def _answer_tokens(spans: np.ndarray, start: int, end: int) -> tuple[int, int] | None:
    """First and last context token overlapping characters [start, end), or None."""
    overlap = np.flatnonzero(
        (spans[:, 1] > start) & (spans[:, 0] < end) & (spans[:, 1] > spans[:, 0])
    )
    return (int(overlap[0]), int(overlap[-1])) if overlap.size else None


def example_features(
    example: QAExample,
    example_index: int,
    tokenizer: Tokenizer,
    *,
    seq_len: int,
    max_query_len: int,
    doc_stride: int,
    context_tokens: tuple[list[int], np.ndarray] | None = None,
) -> list[QAFeature]:
    """BERT's features of one example: one per window of its context (at least one).

    `context_tokens`: (ids, [num_tokens, 2] spans) of the context when already tokenised.
    """
    _check_lengths(seq_len, max_query_len)
    special = mlm.bert_special_ids(tokenizer)
    question = tokenizer.encode(example.question)[:max_query_len]
    if context_tokens is None:
        ids, spans = tokenizer.encode_with_offsets(example.context)
        context_tokens = (ids, np.asarray(spans, np.int32).reshape(-1, 2))
    context_ids, spans = context_tokens
    context_offset = len(question) + 2  # [CLS] question [SEP]
    windows = _windows(len(context_ids), seq_len - context_offset - 1, doc_stride)
    best = _best_windows(windows, len(context_ids))
    answer = None
    if example.answers:
        start = example.answer_starts[0]
        answer = _answer_tokens(spans, start, start + len(example.answers[0]))
    features = []
    for w, (start, length) in enumerate(windows):
        input_ids = np.array(
            [
                special.cls,
                *question,
                special.sep,
                *context_ids[start : start + length],
                special.sep,
            ],
            np.int32,
        )  # [context_offset + length + 1]
        offsets = np.full((len(input_ids), 2), -1, np.int32)
        offsets[context_offset : context_offset + length] = spans[start : start + length]
        max_context = np.zeros(len(input_ids), bool)
        max_context[context_offset : context_offset + length] = best[start : start + length] == w
        start_position = end_position = 0
        if answer is not None and start <= answer[0] and answer[1] < start + length:
            start_position = context_offset + answer[0] - start
            end_position = context_offset + answer[1] - start
        features.append(
            QAFeature(
                example_index=example_index,
                window_start=start,
                input_ids=input_ids,
                context_offset=context_offset,
                offsets=offsets,
                max_context=max_context,
                start_position=start_position,
                end_position=end_position,
            )
        )
    return features


def make_features(
    examples: Sequence[QAExample],
    tokenizer: Tokenizer,
    *,
    seq_len: int,
    max_query_len: int,
    doc_stride: int,
) -> Iterator[QAFeature]:
    """Features of every example in order; a context shared by questions is tokenised once."""
    cache: dict[str, tuple[list[int], np.ndarray]] = {}
    for index, example in enumerate(examples):
        if example.context not in cache:
            if len(cache) >= 64:  # SQuAD's questions about one context are consecutive.
                cache.clear()
            ids, spans = tokenizer.encode_with_offsets(example.context)
            cache[example.context] = (ids, np.asarray(spans, np.int32).reshape(-1, 2))
        yield from example_features(
            example,
            index,
            tokenizer,
            seq_len=seq_len,
            max_query_len=max_query_len,
            doc_stride=doc_stride,
            context_tokens=cache[example.context],
        )


def _features_of(config: ml_collections.ConfigDict, tokenizer: Tokenizer, examples) -> Iterator:
    return make_features(
        examples,
        tokenizer,
        seq_len=config.seq_len,
        max_query_len=config.qa.max_query_len,
        doc_stride=config.qa.doc_stride,
    )


def _pad_rows(
    input_ids: Sequence[np.ndarray], context_offsets: Sequence[int], seq_len: int
) -> dict[str, np.ndarray]:
    """input_ids, token_type_ids, attention_mask, each [rows, seq_len] int32, padded with 0."""
    rows = len(input_ids)
    ids = np.zeros((rows, seq_len), np.int32)
    types = np.zeros((rows, seq_len), np.int32)
    mask = np.zeros((rows, seq_len), np.int32)
    for row, (row_ids, offset) in enumerate(zip(input_ids, context_offsets, strict=True)):
        ids[row, : len(row_ids)] = row_ids
        types[row, offset : len(row_ids)] = 1
        mask[row, : len(row_ids)] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


# ----------------------------------------------------------------------------------------------
# Batches.


def _device_shape(batch: dict, local_device_count: int) -> dict:
    """[local_devices * per_device_batch, ...] -> [local_devices, per_device_batch, ...]."""
    return {
        key: value.reshape(local_device_count, -1, *value.shape[1:]) for key, value in batch.items()
    }


def qa_train_batches(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    data_dir: str,
    process_index: int,
    process_count: int,
    local_device_count: int,
) -> iterators.DataIterator:
    """Infinite training batches of this process's features, deterministic from config.seed.

    Keys QA_KEYS: input_ids, token_type_ids, attention_mask [local_devices, per_device_batch,
    seq_len] int32; start_positions, end_positions [local_devices, per_device_batch] int32;
    weights [local_devices, per_device_batch] float32 (all 1). Features are made once, in host
    memory; each epoch visits all of them in a new seeded order (a shuffle of feature indices,
    so an iterator checkpoint holds indices, not rows).
    """
    batch_size = iterators.global_batch_size(config, local_device_count)
    split = config.dataset.train_split
    examples = load_examples(
        config.dataset, split, data_dir=data_dir, shard=(process_index, process_count)
    )
    input_ids, context_offsets, starts, ends = [], [], [], []
    for feature in _features_of(config, tokenizer, examples):  # Only what training reads.
        input_ids.append(feature.input_ids)
        context_offsets.append(feature.context_offset)
        starts.append(feature.start_position)
        ends.append(feature.end_position)
    if not input_ids:
        raise files.DataError(
            f"Process {process_index} of {process_count} got no examples of split {split!r} of "
            f"dataset {config.dataset.name!r}; the split has fewer examples than processes."
        )
    starts_array, ends_array = np.array(starts, np.int32), np.array(ends, np.int32)
    seq_len = config.seq_len

    def rows(indices: np.ndarray) -> tuple[np.ndarray, ...]:
        padded = _pad_rows(
            [input_ids[i] for i in indices], [context_offsets[i] for i in indices], seq_len
        )
        return (
            padded["input_ids"],
            padded["token_type_ids"],
            padded["attention_mask"],
            starts_array[indices],
            ends_array[indices],
            np.ones(len(indices), np.float32),
        )

    def gather(indices: tf.Tensor) -> dict[str, tf.Tensor]:
        # Stateless: a pure function of the indices, so iterator checkpoints need not save it.
        values = tf.numpy_function(rows, [indices], [tf.int32] * 5 + [tf.float32], stateful=False)
        for key, value in zip(QA_KEYS, values, strict=True):
            value.set_shape([batch_size, seq_len] if key in QA_KEYS[:3] else [batch_size])
        return dict(zip(QA_KEYS, values, strict=True))

    count = len(input_ids)
    indices = tf.data.Dataset.range(count).shuffle(
        count, seed=iterators.derive_seed(config.seed, "qa_features"), reshuffle_each_iteration=True
    )
    return iterators.train_iterator(
        indices.repeat(),
        config,
        process_index=process_index,
        process_count=process_count,
        local_device_count=local_device_count,
        features=lambda batches: batches.map(gather, num_parallel_calls=tf.data.AUTOTUNE),
        shuffle_rows=False,
    )


def qa_eval_features(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    split: str,
    data_dir: str,
    process_index: int,
    process_count: int,
) -> tuple[list[QAExample], list[QAFeature]]:
    """This process's examples of `split` (an even contiguous shard) and all their features."""
    examples = load_examples(
        config.dataset, split, data_dir=data_dir, shard=(process_index, process_count)
    )
    return examples, list(_features_of(config, tokenizer, examples))


def qa_eval_num_batches(
    num_features: int, config: ml_collections.ConfigDict, local_device_count: int
) -> int:
    """Batches that hold `num_features` features (take the max over processes for lockstep)."""
    batch_size = iterators.global_batch_size(config, local_device_count)
    return -(-num_features // batch_size)


def qa_eval_batches(
    features: Sequence[QAFeature],
    config: ml_collections.ConfigDict,
    local_device_count: int,
    *,
    num_batches: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Every feature exactly once, in order, in batches shaped like training's.

    Keys QA_KEYS plus feature_index [local_devices, per_device_batch] int32, the row's index
    into `features`; padding rows (filling the last batch, and any batches up to `num_batches`
    so every process yields as many) are all zero with weight 0 and feature_index -1.
    """
    batch_size = iterators.global_batch_size(config, local_device_count)
    needed = qa_eval_num_batches(len(features), config, local_device_count)
    if num_batches and num_batches < needed:
        raise ValueError(
            f"num_batches={num_batches} cannot hold {len(features)} features in batches of "
            f"{batch_size}; need {needed}."
        )
    seq_len = config.seq_len
    for first in range(0, max(num_batches, needed) * batch_size, batch_size):
        chosen = features[first : first + batch_size]
        padding = batch_size - len(chosen)
        batch = _pad_rows(
            [f.input_ids for f in chosen] + [np.zeros(0, np.int32)] * padding,
            [f.context_offset for f in chosen] + [0] * padding,
            seq_len,
        )
        real = np.arange(batch_size) < len(chosen)
        batch["start_positions"] = np.array(
            [f.start_position for f in chosen] + [0] * padding, np.int32
        )
        batch["end_positions"] = np.array(
            [f.end_position for f in chosen] + [0] * padding, np.int32
        )
        batch["weights"] = real.astype(np.float32)
        batch["feature_index"] = np.where(real, first + np.arange(batch_size), -1).astype(np.int32)
        yield _device_shape(batch, local_device_count)
