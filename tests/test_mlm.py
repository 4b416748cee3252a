"""MLM masking: rates, the 80/10/10 split, never-mask rules, whole words, determinism."""

import numpy as np
import pytest

from ptjax.data import mlm, tokenizer
from ptjax.data.builders import text as text_builders
from ptjax.data.tf_setup import import_tf

tf = import_tf()

VOCAB, MASK, CLS, SEP = 1000, 6, 4, 5
SPECIAL = (0, 1, 2, 3, CLS, SEP, MASK)


def _rows(num_rows: int = 200, length: int = 128, seed: int = 0) -> np.ndarray:
    """[CLS] tokens [SEP] tokens [SEP] then padding, with real lengths from 40 to `length`."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(7, VOCAB, (num_rows, length)).astype(np.int32)
    for row, real in zip(ids, rng.integers(40, length + 1, num_rows), strict=True):
        row[0], row[real // 2], row[real - 1] = CLS, SEP, SEP
        row[real:] = 0
    return ids


def _mask(ids, seed=(1, 2), **kw):
    kw = dict(vocab_size=VOCAB, mask_id=MASK, special_ids=SPECIAL, **kw)
    out = mlm.mask_tokens(ids, seed=tf.constant(seed, tf.int64), **kw)
    return tuple(np.asarray(x) for x in out)


def test_rates_and_80_10_10_split():
    ids = _rows()
    inputs, targets, weights = _mask(ids)
    np.testing.assert_array_equal(targets, ids)
    maskable = ~np.isin(ids, SPECIAL)
    selected = weights == 1.0
    assert set(np.unique(weights)) <= {0.0, 1.0}
    per_row = selected.sum(1) / maskable.sum(1)
    assert np.all(np.abs(per_row - 0.15) <= 0.5 / maskable.sum(1) + 1e-9)  # round() per row
    assert abs(selected.sum() / maskable.sum() - 0.15) < 0.005
    masked = selected & (inputs == MASK)
    unchanged = selected & (inputs == ids)
    replaced = selected & ~masked & ~unchanged
    n = selected.sum()  # ~3,200 selected tokens.
    assert abs(masked.sum() / n - 0.8) < 0.03
    assert abs(replaced.sum() / n - 0.1) < 0.025
    assert abs(unchanged.sum() / n - 0.1) < 0.025
    assert not np.isin(inputs[replaced], SPECIAL).any()  # Random tokens are never special.
    np.testing.assert_array_equal(inputs[~selected], ids[~selected])  # Only selected change.


def test_special_tokens_and_padding_are_never_selected():
    ids = _rows(num_rows=50)
    ids[:, 1:4] = [2, 1, 3]  # unk, eos, bos inside the text
    inputs, _, weights = _mask(ids, mask_rate=0.9, random_rate=0.5, keep_rate=0.0)
    special = np.isin(ids, SPECIAL)
    assert weights[special].sum() == 0
    np.testing.assert_array_equal(inputs[special], ids[special])
    # A row of only specials and padding gets no target; a single word gets at least one.
    edge = np.array([[CLS, SEP, 0, 0], [CLS, 17, SEP, 0]], np.int32)
    _, _, weights = _mask(edge)
    np.testing.assert_array_equal(weights, [[0, 0, 0, 0], [0, 1, 0, 0]])


def test_whole_word_masking_masks_whole_words():
    ids = _rows(num_rows=100)
    rng = np.random.default_rng(3)
    starts = rng.random(ids.shape) < 0.4  # Words of 2.5 tokens on average.
    _, _, weights = _mask(ids, whole_word_starts=starts)
    maskable = ~np.isin(ids, SPECIAL)
    for row in range(ids.shape[0]):
        word, words = -1, {}  # Word start -> weights of its tokens.
        for pos in range(ids.shape[1]):
            if not maskable[row, pos]:
                word = -1
                continue
            if word == -1 or starts[row, pos]:
                word = pos
            words.setdefault(word, []).append(float(weights[row, pos]))
        assert all(len(set(w)) == 1 for w in words.values()), f"row {row}: a word partly masked"
        # Words are taken until at least 15% of the tokens are covered, by less than one word.
        target = max(1, int(np.floor(0.15 * maskable[row].sum() + 0.5)))
        longest = max(len(w) for w in words.values())
        assert target <= weights[row].sum() < target + longest


def test_deterministic_for_a_seed_and_through_tf_data(tmp_path):
    ids = _rows(num_rows=20)
    first, second, other = _mask(ids, (7, 7)), _mask(ids, (7, 7)), _mask(ids, (7, 8))
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (first[2] != other[2]).any()

    ds = tf.data.Dataset.from_tensor_slices({"ids": ids}).repeat(2)
    ds = mlm.mask_dataset(ds, seed=5, vocab_size=VOCAB, mask_id=MASK, special_ids=SPECIAL)
    run = [e["weights"] for e in ds.as_numpy_iterator()]
    again = [e["weights"] for e in ds.as_numpy_iterator()]
    np.testing.assert_array_equal(run, again)
    assert (run[0] != run[20]).any()  # The same row masks differently in the second epoch.
    # A checkpointed iterator resumes with the same masks.
    iterator = iter(ds)
    next(iterator)
    checkpoint = tf.train.Checkpoint(iterator=iterator)
    path = checkpoint.write(str(tmp_path / "ckpt"))
    expected = next(iterator)["weights"].numpy()
    restored = iter(ds)
    tf.train.Checkpoint(iterator=restored).read(path).assert_consumed()
    np.testing.assert_array_equal(next(restored)["weights"].numpy(), expected)


def test_rate_validation():
    with pytest.raises(ValueError, match="random_rate"):
        _mask(_rows(num_rows=2), random_rate=0.6, keep_rate=0.6)


def test_bert_tokenizer_ids_and_word_starts(tmp_path):
    texts = text_builders.bible_verses()[:300]
    tok = tokenizer.train_tokenizer(
        texts,
        str(tmp_path / "bert.model"),
        vocab_size=600,
        control_symbols=mlm.BERT_CONTROL_SYMBOLS,
    )
    ids = mlm.bert_special_ids(tok)
    assert (ids.pad, ids.cls, ids.sep, ids.mask) == (0, 4, 5, 6)
    assert ids.mask not in tok.encode("a [MASK] b")  # Control symbols never come from text.
    table = mlm.word_start_table(tok)
    encoded = tok.encode("In the beginning, God")
    assert table[encoded[0]] and table.shape == (tok.vocab_size,)
    assert not table[list(ids.all)].any()
    plain = tokenizer.train_tokenizer(texts, str(tmp_path / "plain.model"), vocab_size=600)
    with pytest.raises(ValueError, match="control_symbols"):
        mlm.bert_special_ids(plain)
