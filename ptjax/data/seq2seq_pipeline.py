"""tf.data input pipelines of T5-style encoder-decoder tasks: text pairs, and the rows and batches
that span corruption (ptjax.data.span_pipeline) shares.

Every batch is a dict of numpy arrays shaped [local_device_count, per_device_batch_size, length]
(SEQ2SEQ_KEYS), length = the encoder length for `encoder_*` keys and the decoder length for
`decoder_*` keys. Segment ids count the examples packed into a row from 1 (0 on padding);
positions restart at 0 in each segment; `decoder_input_tokens` are the targets shifted right
with 0 as the start token, 0 again at every segment start and on padding (T5X's
`autoregressive_inputs`); `decoder_loss_weights` is float32, 1 on every real target token
(eos included). Train iterators are infinite, deterministic from config.seed and checkpointable
(`iterators.DataIterator`); eval iterators cover their split once, the last batch padded with
all-zero rows (weight 0), and every process yields the same number of batches.

Lengths. Encoder length = config.seq_len. Decoder length = `seq2seq.target_len` when set (> 0),
else config.seq_len.

Text pairs (`seq2seq_*`): the (inputs, targets) fields and the inputs prefix of each dataset are
`pair_fields`: `ptjax_en_es` = ("translate English to Spanish: " + en, es); `seq2seq_files` =
(inputs, targets) of JSONL lines; `cnn_dailymail` = ("summarize: " + article, highlights);
translation sets such as `wmt14_translate/de-en` = the builder's supervised keys (de -> en for
that one) with T5's prefix "translate German to English: "; `seq2seq.inputs_key` /
`seq2seq.targets_key` override the fields (a translation set then gets the matching prefix,
others none). Texts are tokenised, cut to length - 1 tokens and given eos. Training packs
examples greedily in reading order (`pack_examples`: a row takes the next example while both its
encoder and decoder sides fit, else a new row starts), unless `pack=False` (one example per row).
Eval never packs: row i of the eval batches (flattened in order) is example i of
`seq2seq_eval_texts`, so decoded rows line up with the reference texts for BLEU/ROUGE.

Span corruption batches are ptjax.data.span_pipeline's, built from the rows and batches here.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np

from ptjax import config as config_lib
from ptjax.data import corpora, datasets, iterators
from ptjax.data import span_corruption as sc
from ptjax.data.tf_setup import import_tf
from ptjax.data.tokenizer import Tokenizer

tf = import_tf()

import tensorflow_datasets as tfds  # noqa: E402  (after import_tf: TF must be set up first)

SEQ2SEQ_KEYS = (
    "encoder_input_tokens",
    "encoder_segment_ids",
    "encoder_positions",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_segment_ids",
    "decoder_positions",
    "decoder_loss_weights",
)
REFERENCE_SEPARATOR = "\x1f"  # Joins a question's answers in load_pairs' 'references'.


# ----------------------------------------------------------------------------------------------
# Lengths and vocabulary.


def seq2seq_lengths(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(encoder length, decoder length) of text-pair batches."""
    target_len = config.seq2seq.target_len or config.seq_len
    for key, value in (("seq_len", config.seq_len), ("seq2seq.target_len", target_len)):
        if value < 2:
            raise config_lib.ConfigError(
                f"Config key {key}={value} is too short: a row needs one token and eos (>= 2)."
            )
    return config.seq_len, target_len


def model_vocab_size(config: ml_collections.ConfigDict, tokenizer: Tokenizer) -> int:
    """model.vocab_size when set, else the tokenizer's pieces + seq2seq.extra_ids sentinels."""
    if config.model.vocab_size > 0:
        return config.model.vocab_size
    return sc.model_vocab_size(tokenizer.vocab_size, config.seq2seq.extra_ids)


# ----------------------------------------------------------------------------------------------
# Rows.


def _row_arrays(num_rows: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.zeros((num_rows, length), np.int32) for _ in range(3))


def decoder_inputs(targets: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
    """Targets [..., length] shifted right, 0 where a segment starts and on padding."""
    shifted = np.zeros_like(targets)
    shifted[..., 1:] = targets[..., :-1]
    previous_segment = np.zeros_like(segment_ids)
    previous_segment[..., 1:] = segment_ids[..., :-1]
    same = (segment_ids == previous_segment) & (segment_ids > 0)
    return np.where(same, shifted, 0).astype(np.int32)


def pack_examples(
    inputs: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    *,
    inputs_len: int,
    targets_len: int,
    pack: bool = True,
) -> dict[str, np.ndarray]:
    """Rows [num_rows, length] of SEQ2SEQ_KEYS from examples that fit (eos already appended).

    With `pack`, a row takes the next example while both sides fit (next-fit, in order: no
    example is split, dropped or reordered); else one example per row.
    """
    rows: list[list[int]] = []  # Indices of the examples of each row.
    enc_fill = dec_fill = 0
    for i, (x, y) in enumerate(zip(inputs, targets, strict=True)):
        if len(x) > inputs_len or len(y) > targets_len:
            raise ValueError(f"Example {i} ({len(x)}, {len(y)} tokens) exceeds the row lengths.")
        fits = (
            pack and rows and enc_fill + len(x) <= inputs_len and dec_fill + len(y) <= targets_len
        )
        if fits:
            rows[-1].append(i)
            enc_fill, dec_fill = enc_fill + len(x), dec_fill + len(y)
        else:
            rows.append([i])
            enc_fill, dec_fill = len(x), len(y)
    enc = _row_arrays(len(rows), inputs_len)  # tokens, segment ids, positions
    dec = _row_arrays(len(rows), targets_len)
    for r, members in enumerate(rows):
        for arrays, sequences in ((enc, inputs), (dec, targets)):
            start = 0
            for segment, i in enumerate(members, start=1):
                n = len(sequences[i])
                arrays[0][r, start : start + n] = sequences[i]
                arrays[1][r, start : start + n] = segment
                arrays[2][r, start : start + n] = np.arange(n)
                start += n
    return {
        "encoder_input_tokens": enc[0],
        "encoder_segment_ids": enc[1],
        "encoder_positions": enc[2],
        "decoder_input_tokens": decoder_inputs(dec[0], dec[1]),
        "decoder_target_tokens": dec[0],
        "decoder_segment_ids": dec[1],
        "decoder_positions": dec[2],
        "decoder_loss_weights": (dec[1] > 0).astype(np.float32),
    }


def _trim_eos(ids: list[int], length: int, eos_id: int) -> list[int]:
    """The first length - 1 tokens, then eos (seqio's append_eos_after_trim)."""
    return [*ids[: length - 1], eos_id]


def _encode_pairs(
    tokenizer: Tokenizer,
    inputs_len: int,
    targets_len: int,
    pack: bool,
    inputs: np.ndarray,
    targets: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """numpy_function body: bytes texts of a group of examples -> its rows (SEQ2SEQ_KEYS order)."""
    eos = tokenizer.eos_id
    x = [_trim_eos(ids, inputs_len, eos) for ids in tokenizer.encode_batch(list(inputs))]
    y = [_trim_eos(ids, targets_len, eos) for ids in tokenizer.encode_batch(list(targets))]
    rows = pack_examples(x, y, inputs_len=inputs_len, targets_len=targets_len, pack=pack)
    return tuple(rows[key] for key in SEQ2SEQ_KEYS)


def _pair_rows(
    pairs: tf.data.Dataset, tokenizer: Tokenizer, inputs_len: int, targets_len: int, pack: bool
) -> tf.data.Dataset:
    """{'inputs', 'targets'} texts -> rows of SEQ2SEQ_KEYS, packed within groups of
    DOCS_PER_TOKENIZE_CALL examples (one partly filled row per group at most)."""
    body = functools.partial(_encode_pairs, tokenizer, inputs_len, targets_len, pack)
    dtypes = [tf.float32 if key == "decoder_loss_weights" else tf.int32 for key in SEQ2SEQ_KEYS]

    def encode(group: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        # Stateless: a pure function of the texts; checkpoints need not save it.
        arrays = tf.numpy_function(
            body, [group["inputs"], group["targets"]], dtypes, stateful=False
        )
        out = {}
        for key, value in zip(SEQ2SEQ_KEYS, arrays, strict=True):
            value.set_shape([None, inputs_len if key.startswith("encoder") else targets_len])
            out[key] = value
        return out

    groups = pairs.batch(iterators.DOCS_PER_TOKENIZE_CALL)
    return groups.map(encode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()


def padding_row(inputs_len: int, targets_len: int) -> dict[str, tf.Tensor]:
    """An all-zero row (weight 0)."""
    return {
        key: tf.zeros(
            [inputs_len if key.startswith("encoder") else targets_len],
            tf.float32 if key == "decoder_loss_weights" else tf.int32,
        )
        for key in SEQ2SEQ_KEYS
    }


# ----------------------------------------------------------------------------------------------
# Text pairs.


def pair_fields(
    config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder
) -> datasets.PairFields:
    """The (inputs, targets) features and inputs prefix of a dataset (module docstring).

    A feature that is missing or not text raises DataError naming the dataset's features.
    """
    features = builder.info.features
    # Translation sets get T5's prefix for whichever direction the keys choose.
    name = datasets.base_name(config.dataset.name)
    translation = isinstance(features, tfds.features.Translation) or name == "ptjax_en_es"
    inputs_key, targets_key = config.seq2seq.inputs_key, config.seq2seq.targets_key
    known = datasets.facts(config.dataset.name).pair
    if known is None:
        supervised = builder.info.supervised_keys
        pair = isinstance(supervised, tuple) and len(supervised) == 2
        if pair and all(isinstance(k, str) for k in supervised):
            known = datasets.PairFields(*supervised, "")
    if inputs_key or targets_key or translation:
        fallback = known or datasets.PairFields("", "", "")
        inputs_key = inputs_key or fallback.inputs
        targets_key = targets_key or fallback.targets
        prefix = ""
        if translation:
            source, target = datasets.language_name(inputs_key), datasets.language_name(targets_key)
            prefix = f"translate {source} to {target}: "
        fields = datasets.PairFields(inputs_key, targets_key, prefix)
    elif known is not None:
        fields = known
    else:
        raise corpora.DataError(
            f"dataset.name={config.dataset.name!r}: which features are the inputs and targets "
            f"is not known; set seq2seq.inputs_key and seq2seq.targets_key (features: "
            f"{sorted(features.keys())})."
        )
    for key, value in (("inputs_key", fields.inputs), ("targets_key", fields.targets)):
        if value not in features:
            raise corpora.DataError(
                f"seq2seq.{key}={value!r} is not a feature of {config.dataset.name!r}; "
                f"features: {sorted(features.keys())}."
            )
        if features[value].tf_dtype != tf.string:
            raise corpora.DataError(
                f"seq2seq.{key}={value!r} of {config.dataset.name!r} is not a text feature "
                f"({features[value]!r})."
            )
    return fields


def _builder_and_fields(
    config: ml_collections.ConfigDict, split: str, data_dir: str
) -> tuple[tfds.core.DatasetBuilder, datasets.PairFields]:
    builder = corpora.get_builder(config.dataset, data_dir=data_dir)
    fields = pair_fields(config, builder)
    if corpora.split_num_examples(builder, split) == 0:
        raise corpora.DataError(f"Split {split!r} of dataset {config.dataset.name!r} is empty.")
    return builder, fields


def is_qa(config: ml_collections.ConfigDict) -> bool:
    """Whether the dataset is a SQuAD-style QA set, read as question + context -> answer."""
    return datasets.is_qa(config.dataset.name)


def qa_inputs(question: str, context: str) -> str:
    """T5's text-to-text form of a reading-comprehension question."""
    return f"question: {question} context: {context}"


def _qa_examples(
    config: ml_collections.ConfigDict, split: str, data_dir: str, shard: tuple[int, int]
) -> list:
    from ptjax.data import qa  # SQuAD, qa_files and ptjax_qa_demo are read there.

    return qa.load_examples(config.dataset, split, data_dir=data_dir, shard=shard)


def _qa_pairs(
    config: ml_collections.ConfigDict, split: str, data_dir: str, shard: tuple[int, int]
) -> tf.data.Dataset:
    examples = _qa_examples(config, split, data_dir, shard)
    return tf.data.Dataset.from_tensor_slices(
        {
            "inputs": tf.constant([qa_inputs(e.question, e.context) for e in examples], tf.string),
            "targets": tf.constant([e.answers[0] for e in examples], tf.string),
            "references": tf.constant(
                [REFERENCE_SEPARATOR.join(e.answers) for e in examples], tf.string
            ),
        }
    )


def split_sizes(
    config: ml_collections.ConfigDict, split: str, *, data_dir: str, process_count: int
) -> list[int]:
    """The number of examples of each process's shard of `split`."""
    if is_qa(config):
        return [len(_qa_examples(config, split, data_dir, (i, process_count)))
                for i in range(process_count)]  # fmt: skip
    builder, _ = _builder_and_fields(config, split, data_dir)
    return [
        corpora.split_num_examples(builder, corpora.process_subsplit(split, i, process_count))
        for i in range(process_count)
    ]


def load_pairs(
    config: ml_collections.ConfigDict,
    split: str,
    *,
    data_dir: str,
    process_index: int = 0,
    process_count: int = 1,
    shuffle_files: bool = False,
) -> tf.data.Dataset:
    """This process's even, contiguous shard of `split` as {'inputs', 'targets', 'references'}
    tf.string scalars, the prefix already put before the inputs; 'references' holds every gold
    target joined by REFERENCE_SEPARATOR (SQuAD's several answers; else the target)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count}).")
    if is_qa(config):
        return _qa_pairs(config, split, data_dir, (process_index, process_count))
    builder, fields = _builder_and_fields(config, split, data_dir)
    subsplit = corpora.process_subsplit(split, process_index, process_count)
    if corpora.split_num_examples(builder, subsplit) == 0:
        empty = tf.constant([], tf.string)
        return tf.data.Dataset.from_tensor_slices(
            {"inputs": empty, "targets": empty, "references": empty}
        )
    read_config = tfds.ReadConfig(
        shuffle_seed=iterators.derive_seed(config.seed, "files"),
        shuffle_reshuffle_each_iteration=True,
        try_autocache=False,  # A cache would be saved whole in every iterator checkpoint.
    )
    ds = builder.as_dataset(split=subsplit, shuffle_files=shuffle_files, read_config=read_config)

    def select(example: dict) -> dict[str, tf.Tensor]:
        inputs = example[fields.inputs]
        if fields.prefix:
            inputs = tf.strings.join([fields.prefix, inputs])
        targets = example[fields.targets]
        return {"inputs": inputs, "targets": targets, "references": targets}

    return ds.map(select, num_parallel_calls=tf.data.AUTOTUNE)


def seq2seq_train_batches(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    data_dir: str,
    process_index: int,
    process_count: int,
    local_device_count: int,
    pack: bool = True,
) -> iterators.DataIterator:
    """Infinite (inputs, targets) batches (SEQ2SEQ_KEYS) of this process's training shard.

    Examples are shuffled with a seeded buffer (anew every epoch), repeated, encoded, packed
    (unless `pack=False`), rows shuffled again and batched; the position is checkpointable.
    """
    inputs_len, targets_len = seq2seq_lengths(config)
    split = config.dataset.train_split
    pairs = load_pairs(
        config,
        split,
        data_dir=data_dir,
        process_index=process_index,
        process_count=process_count,
        shuffle_files=True,
    )
    pairs = iterators.shuffled_epochs(
        pairs,
        config,
        purpose="examples",
        process_index=process_index,
        process_count=process_count,
        what="examples",
    )
    return iterators.train_iterator(
        _pair_rows(pairs, tokenizer, inputs_len, targets_len, pack),
        config,
        process_index=process_index,
        process_count=process_count,
        local_device_count=local_device_count,
    )


def seq2seq_eval_num_batches(
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
    sizes = split_sizes(config, split, data_dir=data_dir, process_count=process_count)
    return iterators.num_eval_batches(sizes, batch_size, config.dataset.max_eval_batches)


def seq2seq_eval_batches(
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

    One example per row, in `seq2seq_eval_texts` order; the last partial batch and the batches a
    shorter shard lacks are all-zero rows (weight 0): every process yields
    `seq2seq_eval_num_batches` batches.
    """
    split = config.dataset.eval_split if split is None else split
    inputs_len, targets_len = seq2seq_lengths(config)
    num_batches = seq2seq_eval_num_batches(
        config,
        split=split,
        data_dir=data_dir,
        process_count=process_count,
        local_device_count=local_device_count,
    )
    pairs = load_pairs(
        config, split, data_dir=data_dir, process_index=process_index, process_count=process_count
    )
    return iterators.eval_iterator(
        _pair_rows(pairs, tokenizer, inputs_len, targets_len, pack=False),
        padding_row(inputs_len, targets_len),
        config,
        num_batches=num_batches,
        local_device_count=local_device_count,
    )


def _eval_pairs(
    config: ml_collections.ConfigDict,
    split: str | None,
    data_dir: str,
    process_index: int,
    process_count: int,
    local_device_count: int,
) -> list[dict[str, str]]:
    """The eval rows' pairs as Python strings, in row order, cut like the batches."""
    split = config.dataset.eval_split if split is None else split
    pairs = load_pairs(
        config, split, data_dir=data_dir, process_index=process_index, process_count=process_count
    )
    if config.dataset.max_eval_batches > 0:
        batch_size = iterators.global_batch_size(config, local_device_count)
        pairs = pairs.take(config.dataset.max_eval_batches * batch_size)
    return [
        {key: value.decode("utf-8") for key, value in pair.items()}
        for pair in pairs.as_numpy_iterator()
    ]


def seq2seq_eval_texts(
    config: ml_collections.ConfigDict,
    *,
    split: str | None = None,
    data_dir: str,
    process_index: int = 0,
    process_count: int = 1,
    local_device_count: int = 1,
) -> tuple[list[str], list[str]]:
    """(inputs texts with prefix, reference targets texts) of the eval rows, in row order.

    Item i belongs to row i of `seq2seq_eval_batches` (batches flattened [D * B] in order) with
    the same arguments; cut like the batches when dataset.max_eval_batches caps them (which is
    why `local_device_count` is needed then).
    """
    pairs = _eval_pairs(config, split, data_dir, process_index, process_count, local_device_count)
    return [p["inputs"] for p in pairs], [p["targets"] for p in pairs]


def seq2seq_eval_references(
    config: ml_collections.ConfigDict,
    *,
    split: str | None = None,
    data_dir: str,
    process_index: int = 0,
    process_count: int = 1,
    local_device_count: int = 1,
) -> list[list[str]]:
    """Every gold target of each eval row, in `seq2seq_eval_texts` order (SQuAD's questions
    have several answers; other sets one)."""
    pairs = _eval_pairs(config, split, data_dir, process_index, process_count, local_device_count)
    return [p["references"].split(REFERENCE_SEPARATOR) for p in pairs]


def pair_texts(
    config: ml_collections.ConfigDict, *, data_dir: str, max_texts: int | None = None
) -> Iterator[str]:
    """The train split's inputs (with prefix) and targets texts, alternating, to train a
    tokenizer that covers both sides (both languages of a translation set); at most
    `max_texts` texts."""
    pairs = load_pairs(config, config.dataset.train_split, data_dir=data_dir)
    count = 0
    for pair in pairs.as_numpy_iterator():
        for key in ("inputs", "targets"):
            if max_texts is not None and count >= max_texts:
                return
            count += 1
            yield pair[key].decode("utf-8")
