"""tf.data input pipelines of the BERT-style encoder tasks: masked-LM pretraining, classification.

Every array of a batch is numpy, shaped [local_device_count, per_device_batch_size, ...] for pmap.
Train iterators are infinite, deterministic from `config.seed` and checkpointable
(`iterators.DataIterator`); eval iterators cover their split once, the last batch padded with
all-zero rows of weight 0, and every process yields the same number of batches.

Masked-LM rows (`mlm_rows`). Documents are tokenised in groups of DOCS_PER_TOKENIZE_CALL. A
document longer than `seq_len - 2` tokens is cut into contiguous chunks of that many tokens;
consecutive chunks and short documents of a group are packed greedily, in order, as sentences
`[CLS] d1 [SEP] d2 [SEP] ... [SEP]` (RoBERTa's FULL-SENTENCES rows: a row may hold several
documents, no chunk is split across rows), then padded with pad id 0; token_type_ids are all 0.
With `mlm.sentence_pairs`, a document is cut into contiguous windows of `seq_len - 3` tokens and
each window is split at a random point into `[CLS] A [SEP] B [SEP]` (token_type_ids 0 up to and
including the first [SEP], 1 after it); a one-token window gives `[CLS] A [SEP]`. Rows are never
packed in this mode, so A and B always come from one document. Batches are masked with
`mlm.mask_dataset` (after `repeat()`: every epoch draws new masks; eval uses one fixed seed).

Classification examples (`classification_train_batches`) are `[CLS] a [SEP]` or
`[CLS] a [SEP] b [SEP]`, truncated to `seq_len` longest-first (the longer text loses its last
token until the pair fits; ties shorten b), padded. Field names come from `example_fields`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np

from ptjax import config as config_lib
from ptjax.data import corpora, datasets, iterators, mlm
from ptjax.data.tf_setup import import_tf
from ptjax.data.tokenizer import Tokenizer, load_tokenizer

tf = import_tf()

import tensorflow_datasets as tfds  # noqa: E402  (after import_tf: TF must be set up first)

MLM_KEYS = ("input_ids", "targets", "weights", "token_type_ids", "attention_mask")
CLASSIFICATION_KEYS = ("input_ids", "token_type_ids", "attention_mask", "labels", "weights")
_LOCAL_LABELED = ("ptjax_spam", "labeled_files")  # Fixed fields: text, text_b (if any), label.
_SCHEMA = config_lib.base_config().dataset  # The defaults that mean "not set by the user".


def _check_seq_len(seq_len: int, pairs: bool) -> None:
    need = 5 if pairs else 3
    if seq_len < need:
        layout = "[CLS] A [SEP] B [SEP]" if pairs else "[CLS] tokens [SEP]"
        raise config_lib.ConfigError(
            f"Config key seq_len={seq_len} is too short for {layout} rows with at least one token "
            f"per text; set seq_len >= {need}."
        )


# ----------------------------------------------------------------------------------------------
# Masked-LM rows.


def mlm_rows(
    token_lists: Sequence[Sequence[int]],
    *,
    seq_len: int,
    cls_id: int,
    sep_id: int,
    sentence_pairs: bool,
    rng: np.random.Generator | None = None,
    pad_id: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a group of tokenised documents (see the module docstring), in document order.

    Returns (ids, token_type_ids), each [num_rows, seq_len] int32. Every document token appears
    in exactly one row. `rng` draws the A/B split points of `sentence_pairs` rows.
    """
    rows: list[list[int]] = []
    types: list[list[int]] = []
    if sentence_pairs:
        _check_seq_len(seq_len, pairs=True)
        rng = rng if rng is not None else np.random.default_rng(0)
        window = seq_len - 3
        for tokens in token_lists:
            tokens = list(tokens)
            for start in range(0, len(tokens), window):
                chunk = tokens[start : start + window]
                if len(chunk) == 1:
                    rows.append([cls_id, *chunk, sep_id])
                    types.append([0, 0, 0])
                    continue
                cut = int(rng.integers(1, len(chunk)))  # A and B both non-empty.
                rows.append([cls_id, *chunk[:cut], sep_id, *chunk[cut:], sep_id])
                types.append([0] * (cut + 2) + [1] * (len(chunk) - cut + 1))
    else:
        _check_seq_len(seq_len, pairs=False)
        capacity = seq_len - 2
        current: list[int] = []  # Sentences of the row being filled, each followed by [SEP].
        for tokens in token_lists:
            tokens = list(tokens)
            for start in range(0, len(tokens), capacity):
                piece = tokens[start : start + capacity]
                if current and 1 + len(current) + len(piece) + 1 > seq_len:
                    rows.append([cls_id, *current])
                    current = []
                current += [*piece, sep_id]
        if current:
            rows.append([cls_id, *current])
        types = [[0] * len(row) for row in rows]
    ids = np.full((len(rows), seq_len), pad_id, np.int32)  # [num_rows, seq_len]
    type_ids = np.zeros((len(rows), seq_len), np.int32)
    for i, (row, row_types) in enumerate(zip(rows, types, strict=True)):
        ids[i, : len(row)] = row
        type_ids[i, : len(row)] = row_types
    return ids, type_ids


def _mlm_row_arrays(
    tokenizer: Tokenizer,
    special: mlm.BertSpecialIds,
    seq_len: int,
    sentence_pairs: bool,
    seed: int,
    texts: np.ndarray,
    index: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """numpy_function body: one group of documents (bytes) -> its MLM rows."""
    return mlm_rows(
        tokenizer.encode_batch(list(texts)),
        seq_len=seq_len,
        cls_id=special.cls,
        sep_id=special.sep,
        sentence_pairs=sentence_pairs,
        rng=np.random.default_rng([seed, int(index)]),
        pad_id=special.pad,
    )


def _mlm_row_dataset(
    texts: tf.data.Dataset, tokenizer: Tokenizer, config: ml_collections.ConfigDict
) -> tf.data.Dataset:
    """Documents -> dataset of rows {'ids', 'token_type_ids'}, each [seq_len] int32."""
    special = mlm.bert_special_ids(tokenizer)
    seq_len, pairs = config.seq_len, config.mlm.sentence_pairs
    body = functools.partial(
        _mlm_row_arrays,
        tokenizer,
        special,
        seq_len,
        pairs,
        iterators.derive_seed(config.seed, "sentence_pairs"),
    )

    def build(index: tf.Tensor, batch: tf.Tensor) -> dict[str, tf.Tensor]:
        # Stateless: a pure function of (documents, group index); checkpoints need not save it.
        ids, types = tf.numpy_function(body, [batch, index], [tf.int32, tf.int32], stateful=False)
        ids.set_shape([None, seq_len])
        types.set_shape([None, seq_len])
        return {"ids": ids, "token_type_ids": types}

    groups = texts.batch(iterators.DOCS_PER_TOKENIZE_CALL).enumerate()
    rows = groups.map(build, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return rows.unbatch()


def _mlm_features(
    tokenizer: Tokenizer, config: ml_collections.ConfigDict, seed: int
) -> iterators.BatchFeatures:
    """Batched rows -> masked MLM features (MLM_KEYS), masks drawn from `seed`."""
    special = mlm.bert_special_ids(tokenizer)

    def features(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {
            "input_ids": batch["inputs"],
            "targets": batch["targets"],
            "weights": batch["weights"],
            "token_type_ids": batch["token_type_ids"],
            "attention_mask": tf.cast(tf.not_equal(batch["ids"], special.pad), tf.int32),
        }

    def masked(batches: tf.data.Dataset) -> tf.data.Dataset:
        batches = mlm.mask_dataset(
            batches,
            seed=seed,
            ids_key="ids",
            word_starts=mlm.word_start_table(tokenizer) if config.mlm.whole_word else None,
            vocab_size=tokenizer.vocab_size,
            mask_id=special.mask,
            special_ids=special.all,
            pad_id=special.pad,
            mask_rate=config.mlm.mask_rate,
            random_rate=config.mlm.random_rate,
            keep_rate=config.mlm.keep_rate,
        )
        return batches.map(features, num_parallel_calls=tf.data.AUTOTUNE)

    return masked


def mlm_train_batches(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    data_dir: str,
    process_index: int,
    process_count: int,
    local_device_count: int,
) -> iterators.DataIterator:
    """Infinite masked-LM batches of this process's shard (MLM_KEYS), deterministic from the seed.

    Documents are shuffled (every epoch anew), cut and packed into rows, rows shuffled again,
    batched and masked; the iterator's position, masks included, is saved and restored exactly.
    """
    _check_seq_len(config.seq_len, config.mlm.sentence_pairs)
    mlm.bert_special_ids(tokenizer)  # A tokenizer without [CLS]/[SEP]/[MASK] fails here.
    iterators.global_batch_size(config, local_device_count)  # A bad device count fails first.
    texts = iterators.training_documents(
        config, data_dir=data_dir, process_index=process_index, process_count=process_count
    )
    return iterators.train_iterator(
        _mlm_row_dataset(texts, tokenizer, config),
        config,
        process_index=process_index,
        process_count=process_count,
        local_device_count=local_device_count,
        features=_mlm_features(tokenizer, config, iterators.derive_seed(config.seed, "masks")),
    )


@functools.lru_cache(maxsize=16)
def _mlm_eval_rows_per_process(
    dataset_items: tuple,
    split: str,
    data_dir: str,
    tokenizer_key: tuple,
    seq_len: int,
    sentence_pairs: bool,
    process_count: int,
    max_rows: int,
) -> tuple[int, ...]:
    """MLM eval rows of each process's shard (counted up to max_rows; 0 = no cap)."""
    dataset = ml_collections.ConfigDict(dict(dataset_items))
    tokenizer = load_tokenizer(tokenizer_key[0])
    special = mlm.bert_special_ids(tokenizer)
    counts = []
    for process_index in range(process_count):
        texts = corpora.load_texts(
            dataset, split, data_dir=data_dir, shard=(process_index, process_count)
        )
        rows = 0
        for group in texts.batch(iterators.DOCS_PER_TOKENIZE_CALL).as_numpy_iterator():
            ids, _ = mlm_rows(
                tokenizer.encode_batch(list(group)),
                seq_len=seq_len,
                cls_id=special.cls,
                sep_id=special.sep,
                sentence_pairs=sentence_pairs,
            )
            rows += len(ids)
            if max_rows and rows >= max_rows:
                break
        counts.append(rows)
    return tuple(counts)


def mlm_eval_num_batches(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    data_dir: str,
    process_count: int,
    local_device_count: int,
) -> int:
    """MLM eval batches every process yields: the longest shard's, capped by max_eval_batches."""
    batch_size = iterators.global_batch_size(config, local_device_count)
    cap = config.dataset.max_eval_batches
    rows = _mlm_eval_rows_per_process(
        tuple(sorted(config.dataset.to_dict().items())),
        config.dataset.eval_split,
        data_dir,
        (tokenizer.path, tokenizer.vocab_size),
        config.seq_len,
        config.mlm.sentence_pairs,
        process_count,
        cap * batch_size,
    )
    return iterators.num_eval_batches(rows, batch_size, cap)


def mlm_eval_batches(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    data_dir: str,
    process_index: int,
    process_count: int,
    local_device_count: int,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's eval split once as MLM batches, masked the same way on every call.

    Rows are built like training rows (unshuffled); the masks come from a fixed seed derived from
    config.seed; the last partial batch and the batches shorter shards lack are all-zero rows
    (weight 0), so every process yields `mlm_eval_num_batches` batches.
    """
    _check_seq_len(config.seq_len, config.mlm.sentence_pairs)
    mlm.bert_special_ids(tokenizer)
    num_batches = mlm_eval_num_batches(
        config,
        tokenizer,
        data_dir=data_dir,
        process_count=process_count,
        local_device_count=local_device_count,
    )
    texts = corpora.load_texts(
        config.dataset,
        config.dataset.eval_split,
        data_dir=data_dir,
        shard=(process_index, process_count),
    )
    zeros = tf.zeros([config.seq_len], tf.int32)
    return iterators.eval_iterator(
        _mlm_row_dataset(texts, tokenizer, config),
        {"ids": zeros, "token_type_ids": zeros},
        config,
        num_batches=num_batches,
        local_device_count=local_device_count,
        features=_mlm_features(tokenizer, config, iterators.derive_seed(config.seed, "eval_masks")),
    )


# ----------------------------------------------------------------------------------------------
# Classification.


@dataclasses.dataclass(frozen=True)
class ExampleFields:
    """Feature names of a labelled dataset: the text, the second text ('' if none), the label."""

    text: str
    text_b: str
    label: str


def example_fields(
    config_dataset: ml_collections.ConfigDict, features: tfds.features.FeaturesDict
) -> ExampleFields:
    """Which features hold text, text_b and label; a missing one raises naming the features.

    `ptjax_spam` and `labeled_files` use their own fields (text, text_b when the files have it,
    label). Catalogue datasets use dataset.text_key / text_b_key / label_key, where a key left at
    its schema default takes the dataset's known field (datasets.REGISTRY).
    """
    available = sorted(features.keys())
    if datasets.base_name(config_dataset.name) in _LOCAL_LABELED:
        fields = ExampleFields("text", "text_b" if "text_b" in features else "", "label")
    else:
        schema = (_SCHEMA.text_key, _SCHEMA.text_b_key)
        known_text, known_b = datasets.facts(config_dataset.name).text_fields or schema
        text = config_dataset.text_key
        text_b = config_dataset.text_b_key
        fields = ExampleFields(
            text=known_text if text == _SCHEMA.text_key else text,
            text_b=known_b if text_b == _SCHEMA.text_b_key else text_b,
            label=config_dataset.label_key,
        )
    for key, value in (("text_key", fields.text), ("text_b_key", fields.text_b)):
        if not value:
            continue
        if value not in features:
            raise corpora.DataError(
                f"dataset.{key}={value!r} is not a feature of {config_dataset.name!r}; "
                f"features: {available}."
            )
        if features[value].tf_dtype != tf.string:
            raise corpora.DataError(
                f"dataset.{key}={value!r} of {config_dataset.name!r} is not a text feature "
                f"({features[value]!r}); features: {available}."
            )
    if fields.label not in features:
        raise corpora.DataError(
            f"dataset.label_key={fields.label!r} is not a feature of {config_dataset.name!r}; "
            f"features: {available}."
        )
    if not features[fields.label].tf_dtype.is_integer:
        raise corpora.DataError(
            f"dataset.label_key={fields.label!r} of {config_dataset.name!r} is "
            f"{features[fields.label]!r}, not an integer class label (a regression target?)."
        )
    return fields


def label_names(config: ml_collections.ConfigDict, data_dir: str) -> list[str]:
    """The dataset's class names, in label-id order, to size a classification head."""
    builder = corpora.get_builder(config.dataset, data_dir=data_dir)
    fields = example_fields(config.dataset, builder.info.features)
    feature = builder.info.features[fields.label]
    if not isinstance(feature, tfds.features.ClassLabel):
        raise corpora.DataError(
            f"dataset.label_key={fields.label!r} of {config.dataset.name!r} is {feature!r}, not a "
            "tfds.features.ClassLabel, so it has no label names."
        )
    return list(feature.names)


def truncate_longest_first(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Lengths kept of a pair when the longer text loses its last token until both fit `budget`.

    Ties shorten b first (as Hugging Face's 'longest_first'); a pair that fits is kept whole.
    """
    keep_a = min(len_a, max(budget - budget // 2, budget - len_b))
    return keep_a, min(len_b, budget - keep_a)


def encode_examples(
    texts_a: Sequence[Sequence[int]],
    texts_b: Sequence[Sequence[int]] | None,
    *,
    seq_len: int,
    cls_id: int,
    sep_id: int,
    pad_id: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """`[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]` rows of token lists, truncated and padded.

    Returns (ids, token_type_ids), each [num_examples, seq_len] int32; types are 1 on b and its
    [SEP].
    """
    _check_seq_len(seq_len, pairs=texts_b is not None)
    ids = np.full((len(texts_a), seq_len), pad_id, np.int32)  # [examples, seq_len]
    types = np.zeros((len(texts_a), seq_len), np.int32)
    for i, a in enumerate(texts_a):
        if texts_b is None:
            row = [cls_id, *a[: seq_len - 2], sep_id]
        else:
            b = texts_b[i]
            keep_a, keep_b = truncate_longest_first(len(a), len(b), seq_len - 3)
            first = [cls_id, *a[:keep_a], sep_id]
            row = [*first, *b[:keep_b], sep_id]
            types[i, len(first) : len(row)] = 1
        ids[i, : len(row)] = row
    return ids, types


def _encode_arrays(
    tokenizer: Tokenizer, special: mlm.BertSpecialIds, seq_len: int, *texts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """numpy_function body: bytes texts (and second texts) -> (ids, token_type_ids)."""
    texts_a = tokenizer.encode_batch(list(texts[0]))
    texts_b = tokenizer.encode_batch(list(texts[1])) if len(texts) > 1 else None
    return encode_examples(
        texts_a, texts_b, seq_len=seq_len, cls_id=special.cls, sep_id=special.sep, pad_id=0
    )


def _builder_and_fields(
    config: ml_collections.ConfigDict, split: str, data_dir: str
) -> tuple[tfds.core.DatasetBuilder, ExampleFields]:
    builder = corpora.get_builder(config.dataset, data_dir=data_dir)
    fields = example_fields(config.dataset, builder.info.features)
    if corpora.split_num_examples(builder, split) == 0:
        raise corpora.DataError(f"Split {split!r} of dataset {config.dataset.name!r} is empty.")
    return builder, fields


def _load_examples(
    config: ml_collections.ConfigDict,
    split: str,
    *,
    data_dir: str,
    process_index: int,
    process_count: int,
    shuffle_files: bool = False,
) -> tf.data.Dataset:
    """This process's examples of `split`: {'text', 'label' (int32)} (+ 'text_b' for pairs)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count}).")
    builder, fields = _builder_and_fields(config, split, data_dir)
    keys = {"text": fields.text, "label": fields.label}
    if fields.text_b:
        keys["text_b"] = fields.text_b
    subsplit = corpora.process_subsplit(split, process_index, process_count)
    if corpora.split_num_examples(builder, subsplit) == 0:
        empty = {k: tf.constant([], tf.int32 if k == "label" else tf.string) for k in keys}
        return tf.data.Dataset.from_tensor_slices(empty)
    read_config = tfds.ReadConfig(
        shuffle_seed=iterators.derive_seed(config.seed, "files"),
        shuffle_reshuffle_each_iteration=True,
        try_autocache=False,  # A cache would be saved whole in every iterator checkpoint.
    )
    ds = builder.as_dataset(split=subsplit, shuffle_files=shuffle_files, read_config=read_config)

    def select(example: dict) -> dict[str, tf.Tensor]:
        out = {k: example[v] for k, v in keys.items()}
        out["label"] = tf.cast(out["label"], tf.int32)
        return out

    return ds.map(select, num_parallel_calls=tf.data.AUTOTUNE)


def read_labeled_examples(
    config: ml_collections.ConfigDict, split: str, *, data_dir: str
) -> tuple[list[str], list[str] | None, np.ndarray]:
    """A whole split as Python lists: (texts, second texts or None, labels [n] int32), e.g.
    for a baseline outside JAX."""
    ds = _load_examples(config, split, data_dir=data_dir, process_index=0, process_count=1)
    texts, pairs, labels = [], [], []
    for example in ds.as_numpy_iterator():
        texts.append(example["text"].decode("utf-8"))
        if "text_b" in example:
            pairs.append(example["text_b"].decode("utf-8"))
        labels.append(int(example["label"]))
    return texts, (pairs or None), np.asarray(labels, np.int32)


def _encoded(
    examples: tf.data.Dataset, tokenizer: Tokenizer, config: ml_collections.ConfigDict
) -> tf.data.Dataset:
    """Examples -> rows {input_ids, token_type_ids, attention_mask [seq_len], labels, weights}."""
    special = mlm.bert_special_ids(tokenizer)
    seq_len = config.seq_len
    pairs = "text_b" in examples.element_spec
    _check_seq_len(seq_len, pairs)
    body = functools.partial(_encode_arrays, tokenizer, special, seq_len)

    def encode(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        texts = [batch["text"], batch["text_b"]] if pairs else [batch["text"]]
        # Stateless: a pure function of the texts; checkpoints need not save it.
        ids, types = tf.numpy_function(body, texts, [tf.int32, tf.int32], stateful=False)
        ids.set_shape([None, seq_len])
        types.set_shape([None, seq_len])
        return {
            "input_ids": ids,
            "token_type_ids": types,
            "attention_mask": tf.cast(tf.not_equal(ids, special.pad), tf.int32),
            "labels": batch["label"],
            "weights": tf.ones_like(batch["label"], tf.float32),
        }

    batches = examples.batch(iterators.DOCS_PER_TOKENIZE_CALL)
    return batches.map(encode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()


def classification_train_batches(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    data_dir: str,
    process_index: int,
    process_count: int,
    local_device_count: int,
) -> iterators.DataIterator:
    """Infinite classification batches (CLASSIFICATION_KEYS) of this process's training shard.

    Examples are shuffled with a seeded buffer (anew every epoch), repeated and batched with
    drop_remainder; the iterator's position can be saved and restored exactly.
    """
    iterators.global_batch_size(config, local_device_count)  # A bad device count fails first.
    examples = _load_examples(
        config,
        config.dataset.train_split,
        data_dir=data_dir,
        process_index=process_index,
        process_count=process_count,
        shuffle_files=True,
    )
    examples = iterators.shuffled_epochs(
        examples,
        config,
        purpose="examples",
        process_index=process_index,
        process_count=process_count,
        what="examples",
    )
    return iterators.train_iterator(
        _encoded(examples, tokenizer, config),
        config,
        process_index=process_index,
        process_count=process_count,
        local_device_count=local_device_count,
        shuffle_rows=False,
    )


def classification_eval_num_batches(
    config: ml_collections.ConfigDict,
    *,
    split: str | None = None,
    data_dir: str,
    process_count: int,
    local_device_count: int,
) -> int:
    """Eval batches every process yields: the largest shard's, capped by max_eval_batches."""
    split = config.dataset.eval_split if split is None else split
    batch_size = iterators.global_batch_size(config, local_device_count)
    builder, _ = _builder_and_fields(config, split, data_dir)
    sizes = [
        corpora.split_num_examples(builder, corpora.process_subsplit(split, i, process_count))
        for i in range(process_count)
    ]
    return iterators.num_eval_batches(sizes, batch_size, config.dataset.max_eval_batches)


def classification_eval_batches(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    split: str | None = None,
    data_dir: str,
    process_index: int,
    process_count: int,
    local_device_count: int,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example of this process's shard of `split` (default dataset.eval_split) once.

    In reading order; the last partial batch and the batches a shorter shard lacks are all-zero
    rows with weight 0, so every process yields `classification_eval_num_batches` batches.
    """
    split = config.dataset.eval_split if split is None else split
    num_batches = classification_eval_num_batches(
        config,
        split=split,
        data_dir=data_dir,
        process_count=process_count,
        local_device_count=local_device_count,
    )
    examples = _load_examples(
        config, split, data_dir=data_dir, process_index=process_index, process_count=process_count
    )
    zeros = tf.zeros([config.seq_len], tf.int32)
    padding = {
        "input_ids": zeros,
        "token_type_ids": zeros,
        "attention_mask": zeros,
        "labels": tf.constant(0, tf.int32),
        "weights": tf.constant(0.0, tf.float32),
    }
    return iterators.eval_iterator(
        _encoded(examples, tokenizer, config),
        padding,
        config,
        num_batches=num_batches,
        local_device_count=local_device_count,
    )
