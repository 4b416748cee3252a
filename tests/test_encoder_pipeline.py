"""Encoder input pipelines: MLM rows and masks, classification encoding, exact eval coverage."""

from __future__ import annotations

import collections
import json
import types

import numpy as np
import pytest

from ptjax import config as config_lib
from ptjax.data import corpora, mlm
from ptjax.data import encoder_pipeline as ep
from ptjax.data.builders import text as text_builders
from ptjax.data.tf_setup import import_tf
from ptjax.data.tokenizer import train_tokenizer

tf = import_tf()

import tensorflow_datasets as tfds  # noqa: E402  (after import_tf)

CLS, SEP, MASK = 4, 5, 6
DEVICES = 4  # Local devices of the pipelines under test (batch [4, 2, ...]).


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer") / "bert.model"
    texts = text_builders.bible_verses()[:400]
    return train_tokenizer(
        texts, str(path), vocab_size=400, control_symbols=mlm.BERT_CONTROL_SYMBOLS
    )


def make_config(seq_len=32, **dataset):
    config = config_lib.base_config()
    config.seq_len = seq_len
    config.per_device_batch_size = 2
    config.dataset.shuffle_buffer = 64
    config.dataset.update(dataset)
    return config


def shard_kwargs(data_dir, index=0, count=1):
    return dict(
        data_dir=data_dir, process_index=index, process_count=count, local_device_count=DEVICES
    )


def rows_of(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """[D, B, ...] -> [D * B, ...]."""
    return {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------
# MLM.


def test_mlm_rows_pack_short_documents_and_cut_long_ones():
    docs = [[10, 11], [12], list(range(20, 27)), [], [30, 31, 32]]
    ids, types_ = ep.mlm_rows(docs, seq_len=6, cls_id=CLS, sep_id=SEP, sentence_pairs=False)
    np.testing.assert_array_equal(
        ids,
        [
            [CLS, 10, 11, SEP, 12, SEP],  # Two short documents packed as sentences.
            [CLS, 20, 21, 22, 23, SEP],  # A long document in chunks of seq_len - 2.
            [CLS, 24, 25, 26, SEP, 0],
            [CLS, 30, 31, 32, SEP, 0],
        ],
    )
    assert not types_.any() and ids.dtype == types_.dtype == np.int32
    rng = np.random.default_rng(0)
    ids, types_ = ep.mlm_rows(docs, seq_len=6, cls_id=CLS, sep_id=SEP, sentence_pairs=True, rng=rng)
    tokens = [t for row in ids for t in row if t not in (0, CLS, SEP)]
    assert tokens == [t for d in docs for t in d]  # Every token once, in order.
    for row, row_types in zip(ids, types_, strict=True):
        seps = np.flatnonzero(row == SEP)
        assert row[0] == CLS and len(seps) in (1, 2)
        if len(seps) == 2:  # [CLS] A [SEP] B [SEP]: both segments non-empty.
            assert 1 < seps[0] < seps[1] - 1
            np.testing.assert_array_equal(row_types[: seps[0] + 1], 0)
            np.testing.assert_array_equal(row_types[seps[0] + 1 : seps[1] + 1], 1)
        np.testing.assert_array_equal(row_types[seps[-1] + 1 :], 0)
    # [12] and [30, 31, 32] are short; [10, 11] splits into A = [10], B = [11].
    assert list(ids[0][:5]) == [CLS, 10, SEP, 11, SEP]
    with pytest.raises(config_lib.ConfigError, match="seq_len=2"):
        ep.mlm_rows(docs, seq_len=2, cls_id=CLS, sep_id=SEP, sentence_pairs=False)


def check_mlm_batch(batch, tok, sentence_pairs):
    assert set(batch) == set(ep.MLM_KEYS)
    for key, value in batch.items():
        assert value.shape == (DEVICES, 2, 32), key
        assert value.dtype == (np.float32 if key == "weights" else np.int32), key
    b = rows_of(batch)
    targets, inputs, weights = b["targets"], b["input_ids"], b["weights"]
    real = targets != 0
    np.testing.assert_array_equal(b["attention_mask"], real.astype(np.int32))
    assert (targets[:, 0] == CLS).all()
    special = np.isin(targets, mlm.bert_special_ids(tok).all)
    assert set(np.unique(weights)) <= {0.0, 1.0}
    assert not weights[special].any()  # Never on [CLS]/[SEP]/padding.
    np.testing.assert_array_equal(inputs[weights == 0], targets[weights == 0])
    for row, row_types, row_real in zip(targets, b["token_type_ids"], real, strict=True):
        last = np.flatnonzero(row_real)[-1]
        assert row[last] == SEP and row_real[: last + 1].all()  # Padding only at the end.
        seps = np.flatnonzero(row == SEP)
        if sentence_pairs:
            assert len(seps) in (1, 2)
            np.testing.assert_array_equal(row_types[: seps[0] + 1], 0)
            np.testing.assert_array_equal(row_types[seps[0] + 1 : last + 1], 1)
        else:
            assert not row_types.any()
        np.testing.assert_array_equal(row_types[last + 1 :], 0)
    return weights.sum(), (real & ~special).sum()


@pytest.mark.parametrize("sentence_pairs", [False, True])
def test_mlm_train_batches_format_and_rate(tok, data_dir, sentence_pairs):
    config = make_config()
    config.mlm.sentence_pairs = sentence_pairs
    batches = ep.mlm_train_batches(config, tok, **shard_kwargs(data_dir))
    selected = maskable = 0
    for _ in range(30):
        s, m = check_mlm_batch(next(batches), tok, sentence_pairs)
        selected, maskable = selected + s, maskable + m
    assert abs(selected / maskable - 0.15) < 0.02  # ~29k maskable tokens.


def test_mlm_train_is_deterministic_and_resumes(tok, data_dir, tmp_path):
    config = make_config()
    first = ep.mlm_train_batches(config, tok, **shard_kwargs(data_dir))
    second = ep.mlm_train_batches(config, tok, **shard_kwargs(data_dir))
    for _ in range(3):
        a, b = next(first), next(second)
        for key in ep.MLM_KEYS:
            np.testing.assert_array_equal(a[key], b[key])
    config.seed = 1
    other = next(ep.mlm_train_batches(config, tok, **shard_kwargs(data_dir)))
    assert (other["targets"] != a["targets"]).any()

    first.save(str(tmp_path))
    expected = [next(first) for _ in range(3)]
    config.seed = 0
    restored = ep.mlm_train_batches(config, tok, **shard_kwargs(data_dir))
    restored.restore(str(tmp_path))
    for want in expected:
        got = next(restored)
        for key in ep.MLM_KEYS:
            np.testing.assert_array_equal(got[key], want[key])


def test_mlm_whole_word_masking(tok, data_dir):
    config = make_config()
    config.mlm.whole_word = True
    starts = mlm.word_start_table(tok)
    special = mlm.bert_special_ids(tok).all
    batch = rows_of(next(ep.mlm_train_batches(config, tok, **shard_kwargs(data_dir))))
    targets, weights = batch["targets"], batch["weights"]
    maskable = ~np.isin(targets, special)
    # Inside a word: not a word start, after a maskable token (a chunk may begin mid-word).
    continues = ~starts[targets][:, 1:] & maskable[:, 1:] & maskable[:, :-1]
    # A selected token's continuation is selected too, and a continuation only with its start.
    assert (weights[:, 1:][continues] == weights[:, :-1][continues]).all()
    assert continues.sum() > 100
    assert weights.sum() > 0


def eval_docs_tokens(config, tok, data_dir) -> collections.Counter:
    texts = corpora.load_texts(config.dataset, "validation", data_dir=data_dir, shard=(0, 1))
    return collections.Counter(t for d in texts.as_numpy_iterator() for t in tok.encode(d))


@pytest.mark.parametrize("count,sentence_pairs", [(1, False), (3, True)])
def test_mlm_eval_covers_every_token_once(tok, data_dir, count, sentence_pairs):
    config = make_config()
    config.mlm.sentence_pairs = sentence_pairs
    special = mlm.bert_special_ids(tok).all
    seen = collections.Counter()
    lengths = set()
    for index in range(count):
        batches = list(ep.mlm_eval_batches(config, tok, **shard_kwargs(data_dir, index, count)))
        lengths.add(len(batches))
        for batch in batches:
            b = rows_of(batch)
            targets = b["targets"]
            seen.update(targets[~np.isin(targets, special)].tolist())
            padding = ~b["attention_mask"].any(axis=1)
            assert not b["weights"][padding].any() and not b["input_ids"][padding].any()
    assert len(lengths) == 1  # Every process yields the same number of batches.
    assert seen == eval_docs_tokens(config, tok, data_dir)
    config.dataset.max_eval_batches = 2
    assert len(list(ep.mlm_eval_batches(config, tok, **shard_kwargs(data_dir, 0, count)))) == 2


def test_mlm_eval_masks_are_fixed(tok, data_dir):
    config = make_config()
    run = [b["input_ids"] for b in ep.mlm_eval_batches(config, tok, **shard_kwargs(data_dir))]
    again = [b["input_ids"] for b in ep.mlm_eval_batches(config, tok, **shard_kwargs(data_dir))]
    np.testing.assert_array_equal(run, again)
    assert (np.concatenate(run) == MASK).any()


# ----------------------------------------------------------------------------------------------
# Classification.


def test_truncate_longest_first_matches_token_by_token():
    for budget in range(1, 9):
        for len_a in range(12):
            for len_b in range(12):
                a, b = len_a, len_b
                while a + b > budget:  # Hugging Face's loop: ties shorten b.
                    if a > b:
                        a -= 1
                    else:
                        b -= 1
                assert ep.truncate_longest_first(len_a, len_b, budget) == (a, b)


def test_encode_examples():
    ids, types_ = ep.encode_examples(
        [[10, 11, 12, 13, 14], [20]], [[30, 31], [40, 41, 42, 43, 44]], seq_len=8,
        cls_id=CLS, sep_id=SEP,
    )  # fmt: skip
    np.testing.assert_array_equal(
        ids, [[CLS, 10, 11, 12, SEP, 30, 31, SEP], [CLS, 20, SEP, 40, 41, 42, 43, SEP]]
    )
    np.testing.assert_array_equal(types_, [[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1]])
    ids, types_ = ep.encode_examples([[10, 11, 12], [20]], None, seq_len=4, cls_id=CLS, sep_id=SEP)
    np.testing.assert_array_equal(ids, [[CLS, 10, 11, SEP], [CLS, 20, SEP, 0]])
    assert not types_.any()
    with pytest.raises(config_lib.ConfigError, match="seq_len=4"):
        ep.encode_examples([[1]], [[2]], seq_len=4, cls_id=CLS, sep_id=SEP)


def expected_rows(config, tok, data_dir, split) -> collections.Counter:
    """(ids, token types, label) of every example of a split, encoded independently."""
    builder = corpora.get_builder(config.dataset, data_dir=data_dir)
    examples = list(builder.as_dataset(split=split).as_numpy_iterator())
    texts_b = [tok.encode(e["text_b"]) for e in examples] if "text_b" in examples[0] else None
    ids, types_ = ep.encode_examples(
        [tok.encode(e["text"]) for e in examples], texts_b, seq_len=config.seq_len,
        cls_id=CLS, sep_id=SEP,
    )  # fmt: skip
    labels = [int(e["label"]) for e in examples]
    return collections.Counter(
        (tuple(i), tuple(t), label) for i, t, label in zip(ids, types_, labels, strict=True)
    )


def eval_rows(config, tok, data_dir, count, split=None) -> collections.Counter:
    """The real (weight 1) rows every process's eval batches hold, checking the padding rows."""
    got = collections.Counter()
    lengths = set()
    for index in range(count):
        batches = list(
            ep.classification_eval_batches(
                config, tok, split=split, **shard_kwargs(data_dir, index, count)
            )
        )
        lengths.add(len(batches))
        for batch in batches:
            assert set(batch) == set(ep.CLASSIFICATION_KEYS)
            assert batch["labels"].shape == batch["weights"].shape == (DEVICES, 2)
            b = rows_of(batch)
            real = b["weights"] == 1.0
            assert set(np.unique(b["weights"])) <= {0.0, 1.0}
            assert not b["input_ids"][~real].any() and not b["attention_mask"][~real].any()
            np.testing.assert_array_equal(b["attention_mask"], b["input_ids"] != 0)
            for ids, types_, label in zip(
                b["input_ids"][real], b["token_type_ids"][real], b["labels"][real], strict=True
            ):
                got[(tuple(ids), tuple(types_), int(label))] += 1
    assert len(lengths) == 1  # The same number of batches on every process.
    return got


@pytest.mark.parametrize("count", [1, 2])
def test_spam_eval_every_example_once(tok, data_dir, count):
    config = make_config(seq_len=48, name="ptjax_spam")
    got = eval_rows(config, tok, data_dir, count)
    assert sum(got.values()) == 519  # The documented validation size.
    assert got == expected_rows(config, tok, data_dir, "validation")
    if count == 1:
        test = eval_rows(config, tok, data_dir, 1, split="test")
        assert test == expected_rows(config, tok, data_dir, "test")
        assert sum(test.values()) == 528
        assert ep.label_names(config, data_dir) == ["ham", "spam"]


def test_spam_train_batches(tok, data_dir, tmp_path):
    config = make_config(seq_len=48, name="ptjax_spam")
    batches = ep.classification_train_batches(config, tok, **shard_kwargs(data_dir))
    batch = next(batches)
    assert set(batch) == set(ep.CLASSIFICATION_KEYS)
    assert batch["input_ids"].shape == (DEVICES, 2, 48) and batch["labels"].dtype == np.int32
    assert (batch["weights"] == 1.0).all() and (batch["input_ids"][..., 0] == CLS).all()
    again = next(ep.classification_train_batches(config, tok, **shard_kwargs(data_dir)))
    np.testing.assert_array_equal(again["input_ids"], batch["input_ids"])
    batches.save(str(tmp_path))
    expected = [next(batches) for _ in range(2)]
    restored = ep.classification_train_batches(config, tok, **shard_kwargs(data_dir))
    restored.restore(str(tmp_path))
    for want in expected:
        got = next(restored)
        for key in ep.CLASSIFICATION_KEYS:
            np.testing.assert_array_equal(got[key], want[key])
    labels = np.concatenate([next(batches)["labels"].ravel() for _ in range(20)])
    assert set(labels) == {0, 1}  # Shuffled: both classes appear.


def write_jsonl(path, records) -> str:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    """Train/validation/test JSONL sentence pairs with labels yes/no/maybe, some over seq_len."""
    verses = text_builders.bible_verses()
    root = tmp_path_factory.mktemp("pairs")
    labels = ["yes", "no", "maybe"]

    def records(start, n):
        return [
            {
                "text": " ".join(verses[start + i : start + i + 1 + i % 3]),
                "text_b": verses[start + 500 + i][: 10 + 7 * i],
                "label": labels[i % 3],
            }
            for i in range(n)
        ]

    return (
        write_jsonl(root / "train.jsonl", records(0, 40)),
        write_jsonl(root / "valid.jsonl", records(1000, 23)),
        write_jsonl(root / "test.jsonl", records(2000, 11)),
    )


@pytest.mark.parametrize("count", [1, 3])
def test_labeled_files_pairs_eval_every_example_once(tok, data_dir, pair_files, count):
    train, valid, test = pair_files
    config = make_config(
        seq_len=24, name="labeled_files", train_files=train, eval_files=valid, test_files=test
    )
    got = eval_rows(config, tok, data_dir, count)
    assert sum(got.values()) == 23
    assert got == expected_rows(config, tok, data_dir, "validation")
    assert any(t[-1] == 1 for _, t, _ in got)  # Token type 1 on b.
    assert any(i[-1] == SEP for i, _, _ in got)  # Some pairs were truncated to seq_len.
    test_rows = eval_rows(config, tok, data_dir, count, split="test")
    assert sum(test_rows.values()) == 11
    assert ep.label_names(config, data_dir) == ["maybe", "no", "yes"]
    first = next(ep.classification_train_batches(config, tok, **shard_kwargs(data_dir)))
    assert first["token_type_ids"].any()


def test_example_fields_of_catalogue_datasets():
    text, label = tfds.features.Text(), tfds.features.ClassLabel(names=["a", "b"])
    mrpc = tfds.features.FeaturesDict(
        {"sentence1": text, "sentence2": text, "label": label, "idx": tf.int32}
    )
    dataset = make_config(name="glue/mrpc:2.0.0").dataset
    assert ep.example_fields(dataset, mrpc) == ep.ExampleFields("sentence1", "sentence2", "label")
    news = tfds.features.FeaturesDict({"title": text, "description": text, "label": label})
    dataset = make_config(name="ag_news_subset").dataset
    assert ep.example_fields(dataset, news) == ep.ExampleFields("description", "", "label")
    dataset.text_b_key = "title"
    assert ep.example_fields(dataset, news).text_b == "title"
    dataset = make_config(name="my_dataset", text_key="body").dataset
    with pytest.raises(corpora.DataError, match=r"text_key='body'.*\['description', 'label'"):
        ep.example_fields(dataset, news)
    dataset = make_config(name="glue/sst2", label_key="target").dataset
    sst2 = tfds.features.FeaturesDict({"sentence": text, "label": label})
    with pytest.raises(corpora.DataError, match=r"label_key='target'.*\['label', 'sentence'\]"):
        ep.example_fields(dataset, sst2)
    stsb = tfds.features.FeaturesDict({"sentence1": text, "sentence2": text, "label": tf.float32})
    with pytest.raises(corpora.DataError, match="not an integer class label"):
        ep.example_fields(make_config(name="glue/stsb").dataset, stsb)


def test_label_names_needs_a_class_label(monkeypatch):
    features = tfds.features.FeaturesDict({"text": tfds.features.Text(), "label": tf.int64})
    fake = types.SimpleNamespace(info=types.SimpleNamespace(features=features))
    monkeypatch.setattr(corpora, "get_builder", lambda *a, **k: fake)
    with pytest.raises(corpora.DataError, match=r"label_key='label' of 'my_data'.*ClassLabel"):
        ep.label_names(make_config(name="my_data"), "unused")


# ----------------------------------------------------------------------------------------------
# Registration and errors.


def test_labelled_datasets_feed_load_texts(data_dir, pair_files):
    spam = corpora.load_texts(make_config(name="ptjax_spam").dataset, "test", data_dir=data_dir)
    assert int(spam.cardinality()) == 528
    dataset = make_config(name="labeled_files", train_files=pair_files[0]).dataset
    texts = list(corpora.iterate_texts(dataset, "train", data_dir=data_dir))
    assert len(texts) == 40 and all(texts)
    with pytest.raises(corpora.DataError, match="labeled_files.*needs dataset.train_files"):
        corpora.get_builder(make_config(name="labeled_files").dataset, data_dir=data_dir)
    with pytest.raises(corpora.DataError, match="not_a_dataset"):
        corpora.get_builder(make_config(name="not_a_dataset").dataset, data_dir=data_dir)


def test_errors(tok, data_dir, tmp_path):
    plain = train_tokenizer(
        text_builders.bible_verses()[:300], str(tmp_path / "plain.model"), vocab_size=400
    )
    with pytest.raises(ValueError, match="control_symbols"):
        ep.mlm_train_batches(make_config(), plain, **shard_kwargs(data_dir))
    spam = make_config(name="ptjax_spam")
    with pytest.raises(ValueError, match="control_symbols"):
        ep.classification_train_batches(spam, plain, **shard_kwargs(data_dir))
    with pytest.raises(config_lib.ConfigError, match="seq_len=2"):
        ep.mlm_train_batches(make_config(seq_len=2), tok, **shard_kwargs(data_dir))
    pairs = make_config(seq_len=4)
    pairs.mlm.sentence_pairs = True
    with pytest.raises(config_lib.ConfigError, match="seq_len=4.*seq_len >= 5"):
        ep.mlm_eval_batches(pairs, tok, **shard_kwargs(data_dir))
    with pytest.raises(config_lib.ConfigError, match="seq_len=2"):
        ep.classification_eval_batches(
            make_config(2, name="ptjax_spam"), tok, **shard_kwargs(data_dir)
        )
    empty = make_config(name="ptjax_spam", eval_split="validation[:0]")
    with pytest.raises(corpora.DataError, match=r"validation\[:0\].*ptjax_spam.*empty"):
        ep.classification_eval_batches(empty, tok, **shard_kwargs(data_dir))
    with pytest.raises(corpora.DataError, match="no split 'dev'"):
        ep.classification_eval_batches(spam, tok, split="dev", **shard_kwargs(data_dir))


@pytest.mark.parametrize(
    "name, pair, labels",
    [
        ("glue/sst2", False, ["negative", "positive"]),
        ("glue/mrpc", True, ["not_equivalent", "equivalent"]),
        ("imdb_reviews", False, ["neg", "pos"]),
        ("ag_news_subset", False, ["World", "Sports", "Business", "Sci/Tech"]),
    ],
)
def test_catalogue_datasets_by_name_through_mock_data(tok, tmp_path, monkeypatch, name, pair,
                                                      labels):  # fmt: skip
    """TFDS catalogue classification sets read by name (random examples of their real feature
    specs from tfds.testing.mock_data; their split sizes are not known offline, so patched)."""
    config = make_config(name=name)
    monkeypatch.setattr(corpora, "split_num_examples", lambda builder, split: 10)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    kwargs = shard_kwargs(str(tmp_path))
    with tfds.testing.mock_data(num_examples=10):
        assert ep.label_names(config, str(tmp_path)) == labels
        config.dataset.eval_split = "validation" if name.startswith("glue") else "test"
        batches = list(ep.classification_eval_batches(config, tok, **kwargs))
        assert sum(float(b["weights"].sum()) for b in batches) == 10
        batch = next(ep.classification_train_batches(config, tok, **kwargs))
    assert batch["input_ids"].shape == (DEVICES, 2, 32)
    assert bool((batch["token_type_ids"] == 1).any()) == pair  # Pairs have a second segment.
    assert set(np.unique(batch["labels"])) <= set(range(len(labels)))
