"""LM objectives and tf.data pipelines: exact packing, eval padding, shards, determinism, resume."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ptjax import config as config_lib
from ptjax.data import corpora, lm_pipeline, objectives
from ptjax.data.builders import text as text_builders
from ptjax.data.tf_setup import import_tf
from ptjax.data.tokenizer import train_tokenizer

tf = import_tf()

SEQ_LEN = 32


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer") / "tiny.model"
    return train_tokenizer(text_builders.bible_verses()[:400], str(path), vocab_size=400)


def make_config(**dataset):
    config = config_lib.base_config()
    config.seq_len = SEQ_LEN
    config.per_device_batch_size = 2
    config.dataset.shuffle_buffer = 64
    config.dataset.update(dataset)
    return config


def stream_of(tok, config, data_dir, shard=(0, 1)) -> np.ndarray:
    """The eval token stream `[eos] + tokens(doc)` ... of one shard, in reading order."""
    docs = corpora.load_texts(
        config.dataset, config.dataset.eval_split, data_dir=data_dir, shard=shard
    )
    return np.array(
        [i for d in docs.as_numpy_iterator() for i in [tok.eos_id, *tok.encode(d)]], np.int32
    )


def chunks_dataset(chunks: list[list[int]]) -> tf.data.Dataset:
    return tf.data.Dataset.from_generator(
        lambda: (np.array(c, np.int32) for c in chunks),
        output_signature=tf.TensorSpec([None], tf.int32),
    )


def test_lm_features_hand_made():
    rows = np.array(
        [[1, 5, 6, 1, 7, 8, 1, 1, 9], [5, 6, 1, 7, 0, 0, 0, 0, 0]], np.int32
    )  # [2, seq_len + 1] with seq_len 8
    f = {k: v.numpy() for k, v in objectives.lm_features(rows, eos_id=1, pad_id=0).items()}
    np.testing.assert_array_equal(f["inputs"], rows[:, :-1])
    np.testing.assert_array_equal(f["targets"], rows[:, 1:])
    np.testing.assert_array_equal(
        f["segment_ids"], [[1, 1, 1, 2, 2, 2, 3, 4], [1, 1, 2, 2, 0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        f["positions"], [[0, 1, 2, 0, 1, 2, 0, 0], [0, 1, 0, 1, 0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(f["weights"], [[1] * 8, [1, 1, 1, 0, 0, 0, 0, 0]])
    assert f["weights"].dtype == np.float32 and f["segment_ids"].dtype == np.int32
    single = objectives.lm_features(rows[0], eos_id=1)  # Unbatched rows work too.
    assert single["positions"].shape == (8,)


def test_lm_features_of_documents_framed_by_bos_and_eos():
    # Llama's framing: [bos=3] text [eos=1]; padding 0.
    rows = np.array([[3, 5, 6, 1, 3, 7, 8, 1, 3], [7, 1, 3, 9, 1, 0, 0, 0, 0]], np.int32)
    f = {k: v.numpy() for k, v in objectives.lm_features(rows, eos_id=1, bos_id=3).items()}
    np.testing.assert_array_equal(
        f["segment_ids"], [[1, 1, 1, 1, 2, 2, 2, 2], [1, 1, 2, 2, 2, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        f["positions"], [[0, 1, 2, 3, 0, 1, 2, 3], [0, 1, 0, 1, 2, 0, 0, 0]]
    )
    # Every text token and its eos are learned; the next document's bos after an eos is not.
    np.testing.assert_array_equal(
        f["weights"], [[1, 1, 1, 0, 1, 1, 1, 0], [1, 0, 1, 1, 0, 0, 0, 0]]
    )


def test_tokenize_documents_with_bos_framing(tok):
    class Llama(type(tok)):
        bos_documents = True

    llama = Llama(tok.path)
    flat = lm_pipeline.tokenize_documents(llama, np.array([b"In the", b""], object))
    np.testing.assert_array_equal(flat, [3, *tok.encode("In the"), 1, 3, 1])
    assert flat.dtype == np.int32 and not tok.bos_documents


@pytest.mark.parametrize("flush", [False, True])
def test_packing_loses_and_duplicates_nothing(flush):
    rng = np.random.default_rng(0)
    sizes = [0, 1, 5, 40, 0, 3, 200, 31, 32, 33, 1, 64, 7]  # Empty, tiny and multi-row chunks.
    chunks = [list(rng.integers(4, 400, size=n)) for n in sizes]
    stream = np.concatenate([np.array(c, np.int32) for c in chunks])
    rows = np.stack(list(objectives.pack_rows(chunks_dataset(chunks), SEQ_LEN, flush=flush)))
    assert rows.shape[1] == SEQ_LEN + 1
    np.testing.assert_array_equal(rows[1:, 0], rows[:-1, -1])  # Consecutive rows share a token.
    f = objectives.lm_features(rows, eos_id=1)
    targets = f["targets"].numpy()[f["weights"].numpy() > 0]
    full_rows = (len(stream) - 1) // SEQ_LEN
    expected = stream[1:] if flush else stream[1 : 1 + full_rows * SEQ_LEN]
    np.testing.assert_array_equal(targets, expected)
    assert len(rows) == (-(-(len(stream) - 1) // SEQ_LEN) if flush else full_rows)


def test_tokenize_documents(tok):
    flat = lm_pipeline.tokenize_documents(tok, np.array([b"In the", b"", "café".encode()], object))
    expected = [1, *tok.encode("In the"), 1, 1, *tok.encode("café")]
    np.testing.assert_array_equal(flat, expected)
    assert flat.dtype == np.int32


def test_eval_batches_cover_the_stream_once(tok, data_dir):
    config = make_config()
    batches = list(
        lm_pipeline.lm_eval_batches(
            config, tok, data_dir=data_dir, process_index=0, process_count=1, local_device_count=2
        )
    )
    stream = stream_of(tok, config, data_dir)
    for b in batches:
        assert {k: v.shape for k, v in b.items()} == {k: (2, 2, SEQ_LEN) for k in b}
    targets = np.concatenate([b["targets"][b["weights"] > 0] for b in batches])
    np.testing.assert_array_equal(targets, stream[1:])  # Each token after the first, once.
    assert sum(b["weights"].sum() for b in batches) == len(stream) - 1
    rows = -(-(len(stream) - 1) // SEQ_LEN)
    assert len(batches) == -(-rows // 4)
    last = batches[-1]["weights"].reshape(4, SEQ_LEN)
    real_rows = rows - 4 * (len(batches) - 1)  # Real rows in the last batch.
    assert last[real_rows:].sum() == 0  # Padding rows weigh 0.
    assert last[real_rows - 1].sum() == (len(stream) - 1) - (rows - 1) * SEQ_LEN  # Padded row.


def test_eval_processes_step_in_lockstep(tok, data_dir):
    config = make_config()
    per_process = [
        list(
            lm_pipeline.lm_eval_batches(
                config,
                tok,
                data_dir=data_dir,
                process_index=i,
                process_count=2,
                local_device_count=1,
            )
        )
        for i in range(2)
    ]
    assert len(per_process[0]) == len(per_process[1])
    for i, batches in enumerate(per_process):
        stream = stream_of(tok, config, data_dir, shard=(i, 2))
        targets = np.concatenate([b["targets"][b["weights"] > 0] for b in batches])
        np.testing.assert_array_equal(targets, stream[1:])
    config.dataset.max_eval_batches = 3
    limited = lm_pipeline.lm_eval_batches(
        config, tok, data_dir=data_dir, process_index=1, process_count=2, local_device_count=1
    )
    limited = list(limited)
    assert len(limited) == 3 and all(b["weights"].all() for b in limited)


def first_batches(config, tok, data_dir, n=3, **kwargs) -> list[dict]:
    kwargs = {"process_index": 0, "process_count": 1, "local_device_count": 2, **kwargs}
    iterator = lm_pipeline.lm_train_batches(config, tok, data_dir=data_dir, **kwargs)
    return [next(iterator) for _ in range(n)]


def assert_same(a: list[dict], b: list[dict]):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_train_batches_shapes_and_determinism(tok, data_dir):
    config = make_config()
    batches = first_batches(config, tok, data_dir)
    b = batches[0]
    assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
        "inputs": ((2, 2, SEQ_LEN), np.int32),
        "targets": ((2, 2, SEQ_LEN), np.int32),
        "segment_ids": ((2, 2, SEQ_LEN), np.int32),
        "positions": ((2, 2, SEQ_LEN), np.int32),
        "weights": ((2, 2, SEQ_LEN), np.float32),
    }
    assert b["weights"].all() and (b["segment_ids"] >= 1).all()
    np.testing.assert_array_equal(b["inputs"][..., 1:], b["targets"][..., :-1])
    assert_same(batches, first_batches(config, tok, data_dir))
    config.seed = 1
    other = first_batches(config, tok, data_dir)
    assert not np.array_equal(other[0]["inputs"], b["inputs"])


def test_train_iterator_save_restore_is_exact(tok, data_dir, tmp_path):
    config = make_config()
    kwargs = {"data_dir": data_dir, "process_index": 0, "process_count": 1}
    iterator = lm_pipeline.lm_train_batches(config, tok, local_device_count=1, **kwargs)
    for _ in range(5):
        next(iterator)
    prefix = iterator.save(str(tmp_path / "ckpt"))
    after = [next(iterator) for _ in range(4)]
    size = sum(f.stat().st_size for f in (tmp_path / "ckpt").iterdir())
    # Shuffle buffers (64 documents, 64 rows) plus in-flight tokenised chunks of 256 documents.
    assert os.path.basename(prefix) == "data_iterator-process0of1" and size < 4_000_000, size
    fresh = lm_pipeline.lm_train_batches(config, tok, local_device_count=1, **kwargs)
    fresh.restore(str(tmp_path / "ckpt"))
    assert_same(after, [next(fresh) for _ in range(4)])
    other = lm_pipeline.lm_train_batches(
        config, tok, local_device_count=1, **{**kwargs, "process_count": 2}
    )
    with pytest.raises(FileNotFoundError, match="process0of2"):
        other.restore(str(tmp_path / "ckpt"))


def test_train_shards_differ(tok, data_dir):
    config = make_config()
    a = first_batches(config, tok, data_dir, n=1, process_index=0, process_count=2)
    b = first_batches(config, tok, data_dir, n=1, process_index=1, process_count=2)
    assert not np.array_equal(a[0]["inputs"], b[0]["inputs"])


def test_empty_shard_and_missing_split_errors(tok, tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("just one document\n", encoding="utf-8")
    config = make_config(name="text_files", train_files=str(path))
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(ValueError, match="Process 1 of 2 got no documents of split 'train'"):
        lm_pipeline.lm_train_batches(
            config, tok, data_dir=data_dir, process_index=1, process_count=2, local_device_count=1
        )
    with pytest.raises(ValueError, match="no split 'validation'"):
        lm_pipeline.lm_eval_batches(
            config, tok, data_dir=data_dir, process_index=0, process_count=1, local_device_count=1
        )


def test_measure_throughput(tok, data_dir):
    iterator = lm_pipeline.lm_train_batches(
        make_config(),
        tok,
        data_dir=data_dir,
        process_index=0,
        process_count=1,
        local_device_count=1,
    )
    assert lm_pipeline.measure_throughput(iterator, 3) > 0
