"""Seq2seq input pipelines: packing, ptjax_en_es, seq2seq_files, catalogue field mapping, span
corruption batches, exact eval coverage and checkpointable training iterators."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ptjax import config as config_lib
from ptjax.data import corpora
from ptjax.data import seq2seq_pipeline as sp
from ptjax.data import span_corruption as sc
from ptjax.data import span_pipeline as spp
from ptjax.data.builders import pairs
from ptjax.data.tf_setup import import_tf
from ptjax.data.tokenizer import train_tokenizer

tf = import_tf()

import tensorflow_datasets as tfds  # noqa: E402  (after import_tf)

DEVICES = 4  # Local devices of the pipelines under test (batch [4, 2, ...]).
EOS = 1


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    records = pairs.en_es_records()[:500]
    texts = [r["en"] for r in records] + [r["es"] for r in records]
    path = tmp_path_factory.mktemp("tokenizer") / "t5.model"
    return train_tokenizer(texts, str(path), vocab_size=500)


def make_config(seq_len=64, target_len=None, **dataset):
    config = config_lib.base_config()
    config.seq_len = seq_len
    config.per_device_batch_size = 2
    config.dataset.shuffle_buffer = 64
    config.dataset.update(dataset)
    if target_len is not None:
        config.seq2seq.target_len = target_len
    return config


def shard_kwargs(data_dir, index=0, count=1):
    return dict(
        data_dir=data_dir, process_index=index, process_count=count, local_device_count=DEVICES
    )


def rows_of(batch):
    """[D, B, L] -> [D * B, L]."""
    return {k: v.reshape(-1, v.shape[-1]) for k, v in batch.items()}


def segments(row, key_tokens, key_segments):
    """Token lists of a row's segments, in order."""
    ids = row[key_segments]
    return [row[key_tokens][ids == s].tolist() for s in range(1, int(ids.max()) + 1)]


def check_row_invariants(row):
    """Segment ids, positions, shifted decoder inputs and weights agree with each other."""
    for side, tokens_key in (
        ("encoder", "encoder_input_tokens"),
        ("decoder", "decoder_target_tokens"),
    ):
        seg, pos, tokens = row[f"{side}_segment_ids"], row[f"{side}_positions"], row[tokens_key]
        np.testing.assert_array_equal(tokens > 0, seg > 0)
        for s in range(1, int(seg.max(initial=0)) + 1):
            np.testing.assert_array_equal(pos[seg == s], np.arange((seg == s).sum()))
            assert tokens[seg == s][-1] == EOS
    seg, targets = row["decoder_segment_ids"], row["decoder_target_tokens"]
    expected = np.where(row["decoder_positions"] == 0, 0, np.roll(targets, 1)) * (seg > 0)
    np.testing.assert_array_equal(row["decoder_input_tokens"], expected)
    np.testing.assert_array_equal(row["decoder_loss_weights"], (seg > 0).astype(np.float32))


# ----------------------------------------------------------------------------------------------
# Packing.


def test_pack_examples_next_fit_and_one_per_row():
    x = [[5, 6, EOS], [7, EOS], [8, 9, 10, EOS], [11, EOS]]
    y = [[20, EOS], [21, 22, 23, EOS], [24, EOS], [25, EOS]]
    rows = sp.pack_examples(x, y, inputs_len=6, targets_len=6, pack=True)
    np.testing.assert_array_equal(
        rows["encoder_input_tokens"], [[5, 6, EOS, 7, EOS, 0], [8, 9, 10, EOS, 11, EOS]]
    )
    np.testing.assert_array_equal(
        rows["encoder_segment_ids"], [[1, 1, 1, 2, 2, 0], [1] * 4 + [2] * 2]
    )
    np.testing.assert_array_equal(
        rows["encoder_positions"], [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    )
    np.testing.assert_array_equal(
        rows["decoder_target_tokens"], [[20, EOS, 21, 22, 23, EOS], [24, EOS, 25, EOS, 0, 0]]
    )
    # Shifted right, 0 at every segment start (not the previous example's eos) and on padding.
    np.testing.assert_array_equal(
        rows["decoder_input_tokens"], [[0, 20, 0, 21, 22, 23], [0, 24, 0, 25, 0, 0]]
    )
    np.testing.assert_array_equal(rows["decoder_loss_weights"], [[1] * 6, [1, 1, 1, 1, 0, 0]])
    assert rows["decoder_loss_weights"].dtype == np.float32
    for i in range(2):
        check_row_invariants({k: v[i] for k, v in rows.items()})
    # The decoder side decides too: a long target starts a new row.
    rows = sp.pack_examples([[5, EOS], [6, EOS]], [[1] * 5, [2, EOS]], inputs_len=8, targets_len=6)
    assert rows["encoder_input_tokens"].shape == (2, 8)
    single = sp.pack_examples(x, y, inputs_len=6, targets_len=6, pack=False)
    assert single["encoder_input_tokens"].shape == (4, 6)
    assert single["encoder_segment_ids"].max() == 1


# ----------------------------------------------------------------------------------------------
# ptjax_en_es.


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_ptjax_en_es_holds_out_whole_books(data_dir):
    builder = corpora.get_builder(make_config(name="ptjax_en_es").dataset, data_dir=data_dir)
    counts = {split: info.num_examples for split, info in builder.info.splits.items()}
    assert (
        counts
        == pairs.EN_ES_SPLITS
        == {
            "train": 30_686,
            "validation": 157,
            "test": 234,
        }
    )
    books = {}
    for split in counts:
        refs = [e["ref"].decode() for e in builder.as_dataset(split=split).as_numpy_iterator()]
        assert len(set(refs)) == len(refs)
        books[split] = {pairs.book_of(r) for r in refs}
    assert books["validation"] == set(pairs.VALIDATION_BOOKS)
    assert books["test"] == set(pairs.TEST_BOOKS)
    assert not books["train"] & (books["validation"] | books["test"])
    assert len(books["train"]) == 60


def test_en_es_train_batches_packed_deterministic_and_restorable(tok, data_dir, tmp_path):
    config = make_config(seq_len=256, target_len=192, name="ptjax_en_es")
    iterator = sp.seq2seq_train_batches(config, tok, **shard_kwargs(data_dir))
    batch = next(iterator)
    assert set(batch) == set(sp.SEQ2SEQ_KEYS)
    assert batch["encoder_input_tokens"].shape == (DEVICES, 2, 256)
    assert batch["decoder_target_tokens"].shape == (DEVICES, 2, 192)
    assert batch["decoder_loss_weights"].dtype == np.float32
    rows = rows_of(batch)
    assert rows["encoder_segment_ids"].max() >= 2  # Short verses are packed.
    for i in range(len(rows["encoder_input_tokens"])):
        row = {k: v[i] for k, v in rows.items()}
        check_row_invariants(row)
        inputs = segments(row, "encoder_input_tokens", "encoder_segment_ids")
        targets = segments(row, "decoder_target_tokens", "decoder_segment_ids")
        assert len(inputs) == len(targets)
        for x in inputs:
            assert tok.decode(x[:-1]).startswith("translate English to Spanish: ")
    # Same seed, same batches; a restored iterator continues exactly.
    again = sp.seq2seq_train_batches(config, tok, **shard_kwargs(data_dir))
    np.testing.assert_array_equal(
        next(again)["decoder_target_tokens"], batch["decoder_target_tokens"]
    )
    iterator.save(str(tmp_path))
    expected = [next(iterator) for _ in range(3)]
    restored = sp.seq2seq_train_batches(config, tok, **shard_kwargs(data_dir))
    restored.restore(str(tmp_path))
    for want in expected:
        got = next(restored)
        for key in sp.SEQ2SEQ_KEYS:
            np.testing.assert_array_equal(got[key], want[key])
    unpacked = next(sp.seq2seq_train_batches(config, tok, **shard_kwargs(data_dir), pack=False))
    assert unpacked["encoder_segment_ids"].max() == 1


def test_pair_texts_alternate_inputs_and_targets_for_the_tokenizer(data_dir):
    texts = list(sp.pair_texts(make_config(name="ptjax_en_es"), data_dir=data_dir, max_texts=5))
    assert len(texts) == 5 and all(
        t.startswith("translate English to Spanish: ") for t in texts[::2]
    )
    spanish = set(r["es"] for r in pairs.en_es_records())
    assert all(t in spanish for t in texts[1::2])


@pytest.mark.parametrize("count", [1, 3])
def test_en_es_eval_covers_every_example_once_in_text_order(tok, data_dir, count):
    config = make_config(seq_len=48, name="ptjax_en_es", eval_split="validation")
    num_batches = None
    all_targets = []
    for index in range(count):
        kwargs = shard_kwargs(data_dir, index, count)
        batches = list(sp.seq2seq_eval_batches(config, tok, **kwargs))
        num_batches = num_batches or len(batches)
        assert len(batches) == num_batches  # Lockstep across processes.
        inputs, targets = sp.seq2seq_eval_texts(config, **kwargs)
        rows = {k: np.concatenate([rows_of(b)[k] for b in batches]) for k in sp.SEQ2SEQ_KEYS}
        real = rows["decoder_loss_weights"].sum(1) > 0
        assert real.sum() == len(inputs) == len(targets)
        assert real[: len(inputs)].all()  # Real rows first, then padding rows.
        assert not rows["encoder_input_tokens"][len(inputs) :].any()
        for i, (x, y) in enumerate(zip(inputs, targets, strict=True)):
            assert x.startswith("translate English to Spanish: ")
            want_x = [*tok.encode(x)[:47], EOS]
            want_y = [*tok.encode(y)[:47], EOS]
            assert rows["encoder_input_tokens"][i][: len(want_x)].tolist() == want_x
            assert rows["decoder_target_tokens"][i][: len(want_y)].tolist() == want_y
        all_targets += targets
    assert len(all_targets) == len(set(all_targets)) == 157


# ----------------------------------------------------------------------------------------------
# seq2seq_files.


def _jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return str(path)


def test_seq2seq_files_read_and_errors_name_file_and_line(tok, tmp_path):
    pairs = [{"inputs": f"question {i}?", "targets": f"answer {i}."} for i in range(7)]
    train = _jsonl(tmp_path / "train.jsonl", pairs[:5])
    valid = _jsonl(tmp_path / "valid.jsonl", pairs[5:])
    data_dir = str(tmp_path / "tfds")
    config = make_config(seq_len=16, name="seq2seq_files", train_files=train, eval_files=valid)
    inputs, targets = sp.seq2seq_eval_texts(config, data_dir=data_dir)  # TFDS's stored order.
    assert sorted(zip(inputs, targets, strict=True)) == [
        ("question 5?", "answer 5."),
        ("question 6?", "answer 6."),
    ]
    batches = list(sp.seq2seq_eval_batches(config, tok, **shard_kwargs(data_dir)))
    assert len(batches) == 1 and batches[0]["decoder_loss_weights"].sum(-1).astype(bool).sum() == 2
    batch = next(sp.seq2seq_train_batches(config, tok, **shard_kwargs(data_dir)))
    assert batch["decoder_target_tokens"].shape == (DEVICES, 2, 16)

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(pairs[0]) + "\n\n" + json.dumps({"inputs": "x"}) + "\n")
    with pytest.raises(corpora.DataError, match=rf"{bad}:3: missing field 'targets'"):
        sp.seq2seq_eval_texts(
            make_config(name="seq2seq_files", train_files=str(bad)), data_dir=data_dir
        )
    bad.write_text('{"inputs": "x", "targets": 3}\n')
    with pytest.raises(corpora.DataError, match=rf"{bad}:1: field 'targets' is int"):
        corpora.get_builder(
            make_config(name="seq2seq_files", train_files=str(bad)).dataset, data_dir=data_dir
        )
    bad.write_text('{"inputs": "x", "targets": "y"\n')
    with pytest.raises(corpora.DataError, match=rf"{bad}:1: invalid JSON"):
        corpora.get_builder(
            make_config(name="seq2seq_files", train_files=str(bad)).dataset, data_dir=data_dir
        )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(corpora.DataError, match=r"eval_files: .*empty.jsonl.* hold no"):
        corpora.get_builder(
            make_config(name="seq2seq_files", train_files=train, eval_files=str(empty)).dataset,
            data_dir=data_dir,
        )
    with pytest.raises(corpora.DataError, match="no split 'test'"):
        sp.seq2seq_eval_texts(config, split="test", data_dir=data_dir)


# ----------------------------------------------------------------------------------------------
# TFDS catalogue datasets through tfds.testing.mock_data.

WMT = [
    {"de": "Das Haus ist klein.", "en": "The house is small."},
    {"de": "Ich habe Hunger.", "en": "I am hungry."},
    {"de": "Wo ist der Bahnhof?", "en": "Where is the station?"},
]
CNN = [
    {
        "article": "LONDON (CNN) -- The river flooded the old town on Tuesday after days of rain.",
        "highlights": "River floods old town after days of rain.",
        "id": "a1",
        "publisher": "cnn",
    },
    {
        "article": "A new bridge opened on Monday, linking the two halves of the city.",
        "highlights": "New bridge links the city.",
        "id": "a2",
        "publisher": "dm",
    },
]

XSUM = [
    {
        "document": "The council voted on Tuesday to build forty new homes on the old mill site.",
        "summary": "Council backs homes on the old mill site.",
    },
]


@pytest.mark.parametrize(
    ("name", "records", "overrides", "want"),
    [
        ("wmt14_translate/de-en", WMT, {}, ("translate German to English: Das Haus", "The house")),
        (
            "wmt14_translate/de-en",
            WMT,
            {"inputs_key": "en", "targets_key": "de"},  # T5's direction.
            ("translate English to German: The house", "Das Haus"),
        ),
        ("cnn_dailymail", CNN, {}, ("summarize: LONDON (CNN)", "River floods")),
        ("xsum", XSUM, {}, ("summarize: The council voted", "Council backs")),
    ],
)
def test_catalogue_datasets_field_mapping(tok, tmp_path, monkeypatch, name, records, overrides,
                                          want):  # fmt: skip
    config = make_config(seq_len=32, name=name, eval_split="validation")
    if overrides:
        config.seq2seq.update(overrides)

    def as_dataset(self, split, **kwargs):
        del kwargs
        return tf.data.Dataset.from_generator(
            lambda: iter(records), output_signature=self.info.features.get_tensor_spec()
        )

    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    monkeypatch.setattr(corpora, "split_num_examples", lambda builder, split: len(records))
    kwargs = shard_kwargs(str(tmp_path))
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        inputs, targets = sp.seq2seq_eval_texts(config, data_dir=str(tmp_path))
        assert inputs[0].startswith(want[0]) and targets[0].startswith(want[1])
        assert len(inputs) == len(records)
        batches = list(sp.seq2seq_eval_batches(config, tok, **kwargs))
        assert sum(float(b["decoder_loss_weights"][..., 0].sum()) for b in batches) == len(records)
        batch = next(sp.seq2seq_train_batches(config, tok, **kwargs))
        assert batch["encoder_input_tokens"].shape == (DEVICES, 2, 32)
        config.seq2seq.inputs_key = "nope"
        with pytest.raises(corpora.DataError, match="seq2seq.inputs_key='nope' is not a feature"):
            sp.seq2seq_eval_texts(config, data_dir=str(tmp_path))


# ----------------------------------------------------------------------------------------------
# Span corruption.


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_span_corruption_batches_cover_the_eval_stream_exactly(tok, data_dir, tmp_path):
    config = make_config(seq_len=64)  # ptjax_bible; decoder length from random_spans_helper.
    tokens_length, targets_length = sc.random_spans_helper(64)
    assert spp.span_corruption_lengths(config) == (tokens_length, 64, targets_length)
    vocab_size = sp.model_vocab_size(config, tok)
    assert vocab_size == tok.vocab_size + 100
    batch = next(spp.span_corruption_train_batches(config, tok, **shard_kwargs(data_dir)))
    assert batch["encoder_input_tokens"].shape == (DEVICES, 2, 64)
    assert batch["decoder_target_tokens"].shape == (DEVICES, 2, targets_length)
    rows = rows_of(batch)
    assert rows["encoder_segment_ids"].all()  # Train chunks fill the encoder row exactly.
    for i in range(len(rows["encoder_input_tokens"])):
        check_row_invariants({k: v[i] for k, v in rows.items()})

    # Eval: reconstructing every row, in order, gives the split's token stream exactly.
    texts = list(corpora.iterate_texts(config.dataset, "validation", data_dir=data_dir))
    stream = [t for ids in tok.encode_batch(texts) for t in ids]
    batches = list(spp.span_corruption_eval_batches(config, tok, **shard_kwargs(data_dir)))
    assert len(batches) == spp.span_corruption_eval_num_batches(
        config, tok, data_dir=data_dir, process_count=1, local_device_count=DEVICES
    )
    rebuilt = []
    for b in batches:
        r = rows_of(b)
        for x, y in zip(r["encoder_input_tokens"], r["decoder_target_tokens"], strict=True):
            if x.any():  # Not a padding row.
                rebuilt += sc.reconstruct(x, y, tokenizer_vocab_size=tok.vocab_size, eos_id=EOS)
    assert rebuilt == stream
    again = list(spp.span_corruption_eval_batches(config, tok, **shard_kwargs(data_dir)))
    np.testing.assert_array_equal(
        again[3]["encoder_input_tokens"], batches[3]["encoder_input_tokens"]
    )
    counts = [
        len(list(spp.span_corruption_eval_batches(config, tok, **shard_kwargs(data_dir, i, 3))))
        for i in range(3)
    ]
    assert len(set(counts)) == 1


def test_span_corruption_train_iterator_restores(tok, data_dir, tmp_path):
    config = make_config(seq_len=32, target_len=16)
    iterator = spp.span_corruption_train_batches(config, tok, **shard_kwargs(data_dir))
    next(iterator)
    iterator.save(str(tmp_path))
    expected = [next(iterator) for _ in range(2)]
    restored = spp.span_corruption_train_batches(config, tok, **shard_kwargs(data_dir))
    restored.restore(str(tmp_path))
    for want in expected:
        got = next(restored)
        assert got["decoder_target_tokens"].shape == (DEVICES, 2, 16)
        for key in sp.SEQ2SEQ_KEYS:
            np.testing.assert_array_equal(got[key], want[key])


def test_errors_name_the_problem(tok, data_dir):
    kwargs = shard_kwargs(data_dir)
    with pytest.raises(config_lib.ConfigError, match="inputs_length=2 is too short"):
        spp.span_corruption_train_batches(make_config(seq_len=2), tok, **kwargs)
    with pytest.raises(config_lib.ConfigError, match=r"target_len=8 is shorter than the 14 target"):
        spp.span_corruption_train_batches(make_config(seq_len=64, target_len=8), tok, **kwargs)
    with pytest.raises(config_lib.ConfigError, match="seq_len=1 is too short"):
        sp.seq2seq_train_batches(make_config(seq_len=1, name="ptjax_en_es"), tok, **kwargs)
    config = make_config(seq_len=64)
    config.model.vocab_size = tok.vocab_size  # No room above the tokenizer's pieces.
    with pytest.raises(config_lib.ConfigError, match=r"needs \d+ sentinel ids .* leaves 0"):
        spp.span_corruption_train_batches(config, tok, **kwargs)
    with pytest.raises(corpora.DataError, match="no split 'nope'"):
        sp.seq2seq_eval_texts(make_config(name="ptjax_en_es"), split="nope", data_dir=data_dir)
    with pytest.raises(corpora.DataError, match="set seq2seq.inputs_key and seq2seq.targets_key"):
        sp.seq2seq_eval_texts(make_config(name="ptjax_bible"), data_dir=data_dir)


# ----------------------------------------------------------------------------------------------
# SQuAD-style QA as text to text.


def test_qa_sets_read_as_question_context_to_answer_with_every_answer_kept(tok, tmp_path):
    records = [
        {"id": "q1", "question": "Who made the light?", "context": "And God made the light.",
         "answers": [{"text": "God", "answer_start": 4}, {"text": "And God", "answer_start": 0}]},
        {"id": "q2", "question": "What was made?", "context": "And God made the light.",
         "answers": [{"text": "the light", "answer_start": 13}]},
        {"id": "q3", "question": "Made by whom?", "context": "And God made the light.",
         "answers": [{"text": "God", "answer_start": 4}]},
    ]  # fmt: skip
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    config = make_config(seq_len=32, name="qa_files", train_files=str(path), eval_files=str(path))
    assert sp.is_qa(config) and not sp.is_qa(make_config(name="ptjax_en_es"))
    inputs, targets = sp.seq2seq_eval_texts(config, data_dir="")
    assert inputs[0] == "question: Who made the light? context: And God made the light."
    assert targets == ["God", "the light", "God"]
    assert sp.seq2seq_eval_references(config, data_dir="") == [["God", "And God"], ["the light"],
                                                               ["God"]]  # fmt: skip
    # Two processes: contiguous shards of 2 and 1 examples, lockstep batch counts.
    shards = [sp.seq2seq_eval_references(config, data_dir="", process_index=i, process_count=2)
              for i in (0, 1)]  # fmt: skip
    assert shards == [[["God", "And God"]], [["the light"], ["God"]]]
    assert sp.split_sizes(config, "validation", data_dir="", process_count=2) == [1, 2]
    batches = list(sp.seq2seq_eval_batches(config, tok, **shard_kwargs("")))
    assert sum(float(b["decoder_loss_weights"][..., 0].sum()) for b in batches) == 3
    batch = next(sp.seq2seq_train_batches(config, tok, **shard_kwargs("")))
    assert batch["decoder_target_tokens"].shape == (DEVICES, 2, 32)
