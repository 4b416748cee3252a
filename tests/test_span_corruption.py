"""T5 span corruption: lengths, noise statistics, exact reconstruction, determinism, sentinels."""

import numpy as np
import pytest

from ptjax import config as config_lib
from ptjax.data import span_corruption as sc
from ptjax.data.builders import text as text_builders
from ptjax.data.tf_setup import import_tf
from ptjax.data.tokenizer import train_tokenizer

tf = import_tf()

EOS = 1
VOCAB = 1100  # Model vocabulary of the synthetic tests: tokens < 1000, sentinels 1099, 1098, ...
TOKENIZER_VOCAB = 1000


def _corrupt(tokens, seed=(3, 4), vocab_size=VOCAB, **kwargs):
    inputs, targets = sc.span_corruption(
        np.asarray(tokens, np.int32),
        tf.constant(seed, tf.int64),
        vocab_size=vocab_size,
        eos_id=EOS,
        **kwargs,
    )
    return inputs.numpy().tolist(), targets.numpy().tolist()


def _tokens(length, seed=0):
    return np.random.default_rng(seed).integers(4, TOKENIZER_VOCAB, length).astype(np.int32)


def test_random_spans_helper_matches_t5_and_lengths_are_exact():
    assert sc.random_spans_helper(512) == (568, 114)  # T5's numbers for C4 pretraining.
    assert sc.random_spans_helper(3) == (2, 3)
    for inputs_length in range(3, 700):
        tokens_length, targets_length = sc.random_spans_helper(inputs_length)
        assert sc.corrupted_lengths(tokens_length) == (inputs_length, targets_length)
        assert sc.corrupted_lengths(tokens_length + 1)[0] > inputs_length  # The most tokens.
    for inputs_length in (3, 4, 7, 16, 33, 64, 128, 512):
        tokens_length, targets_length = sc.random_spans_helper(inputs_length)
        for seed in range(5):
            inputs, targets = _corrupt(_tokens(tokens_length, seed), seed=(seed, 1))
            assert (len(inputs), len(targets)) == (inputs_length, targets_length)
            assert inputs[-1] == targets[-1] == EOS
    # Other densities and span lengths keep the same contract.
    tokens_length, targets_length = sc.random_spans_helper(
        100, noise_density=0.3, mean_noise_span_length=5.0
    )
    inputs, targets = _corrupt(
        _tokens(tokens_length), noise_density=0.3, mean_noise_span_length=5.0
    )
    assert (len(inputs), len(targets)) == (100, targets_length)


def test_noise_mask_counts_and_statistics():
    length, samples = 568, 400
    masks = np.stack(
        [
            sc.random_spans_noise_mask(length, tf.constant([7, i], tf.int64)).numpy()
            for i in range(samples)
        ]
    )  # [samples, length]
    num_noise, num_spans = sc.noise_counts(length)
    assert (num_noise, num_spans) == (85, 28)  # round(568 * 0.15), round(85 / 3).
    np.testing.assert_array_equal(masks.sum(1), num_noise)  # Exactly, in every sample.
    starts = masks & ~np.pad(masks[:, :-1], [[0, 0], [1, 0]])
    np.testing.assert_array_equal(starts.sum(1), num_spans)
    assert not masks[:, 0].any()  # A non-noise span comes first, a noise span last (T5).
    assert masks[:, -1].all()
    # Span lengths vary around the mean; noise is spread over the whole chunk.
    run_lengths = []
    for mask in masks[:50]:
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
        run_lengths += list(edges[1::2] - edges[::2])
    assert abs(np.mean(run_lengths) - num_noise / num_spans) < 1e-9
    assert min(run_lengths) == 1 and max(run_lengths) >= 8
    by_eighth = masks.reshape(samples, 8, -1).mean(axis=(0, 2))  # Noise share per eighth.
    assert np.all(np.abs(by_eighth[:-1] - 0.15) < 0.015), by_eighth
    assert 0.15 < by_eighth[-1] < 0.2  # The last span is always noise.


def test_decoding_back_reconstructs_the_tokens_exactly():
    for length in (1, 2, 3, 5, 10, 57, 200, 568):
        tokens = _tokens(length, seed=length)
        inputs, targets = _corrupt(tokens, seed=(length, 9))
        got = sc.reconstruct(inputs, targets, tokenizer_vocab_size=TOKENIZER_VOCAB, eos_id=EOS)
        assert got == tokens.tolist(), length
        if length == 1:  # Drawn as 2 tokens and cut: the token is kept, the target empty.
            assert (inputs, targets) == ([tokens[0], EOS], [VOCAB - 1, EOS])
            continue
        sentinels = [t for t in inputs if t >= TOKENIZER_VOCAB]
        assert sentinels == [t for t in targets if t >= TOKENIZER_VOCAB]
        assert sentinels == sc.sentinel_ids(VOCAB, len(sentinels)).tolist()  # 1099, 1098, ...
        assert targets[0] == VOCAB - 1 and len(sentinels) == sc.noise_counts(length)[1]
    # The docstring's example layout: kept tokens, then each sentinel stands for one span.
    inputs, targets = _corrupt(_tokens(8))
    assert inputs.count(VOCAB - 1) == targets.count(VOCAB - 1) == 1


def test_deterministic_from_the_seed():
    tokens = _tokens(300)
    assert _corrupt(tokens, seed=(1, 2)) == _corrupt(tokens, seed=(1, 2))
    assert _corrupt(tokens, seed=(1, 2)) != _corrupt(tokens, seed=(1, 3))
    chunks = tf.data.Dataset.from_tensor_slices(np.stack([_tokens(50, s) for s in range(6)]))

    def run():
        ds = sc.corrupt_dataset(chunks, seed=5, vocab_size=VOCAB, eos_id=EOS)
        return [(e["inputs"].tolist(), e["targets"].tolist()) for e in ds.as_numpy_iterator()]

    first = run()
    assert first == run()
    # Element i uses seed (seed, i): the same as corrupting it alone with that seed.
    assert first[4] == _corrupt(_tokens(50, 4), seed=(5, 4))


def test_sentinels_never_collide_with_a_real_tokenizer(tmp_path):
    tok = train_tokenizer(
        text_builders.bible_verses()[:300], str(tmp_path / "t.model"), vocab_size=400
    )
    vocab_size = sc.model_vocab_size(tok.vocab_size)  # T5's layout: pieces + 100 extra ids.
    assert vocab_size == tok.vocab_size + 100
    text = " ".join(text_builders.bible_verses()[1000:1100])
    ids = tok.encode(text)
    assert max(ids) < tok.vocab_size
    tokens_length, _ = sc.random_spans_helper(128)
    for start in range(0, len(ids) - tokens_length, tokens_length):
        chunk = ids[start : start + tokens_length]
        inputs, targets = _corrupt(chunk, seed=(0, start), vocab_size=vocab_size)
        sentinels = {t for t in inputs + targets if t >= tok.vocab_size}
        assert sentinels and min(sentinels) >= vocab_size - sc.noise_counts(tokens_length)[1]
        got = sc.reconstruct(inputs, targets, tokenizer_vocab_size=tok.vocab_size, eos_id=EOS)
        assert tok.decode(got) == tok.decode(chunk)
    sc.check_sentinel_room(tok.vocab_size, vocab_size, 100)
    with pytest.raises(config_lib.ConfigError, match=r"needs 12 sentinel ids .* leaves 0"):
        sc.check_sentinel_room(tok.vocab_size, tok.vocab_size, 12)


def test_bad_arguments_raise_naming_them():
    with pytest.raises(config_lib.ConfigError, match="inputs_length=2 is too short"):
        sc.random_spans_helper(2)
    with pytest.raises(config_lib.ConfigError, match="noise_density=1.0"):
        sc.random_spans_helper(64, noise_density=1.0)
    with pytest.raises(config_lib.ConfigError, match="mean_noise_span_length=0.5"):
        sc.random_spans_noise_mask(10, [1, 2], mean_noise_span_length=0.5)
