"""Decoding loops on hand-made models whose best answers are known."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptjax.decoding import DecodeConfig, beam_search, filter_logits, sample

PAD, EOS = 0, 1


def markov(table):
    """A 'model' whose next-token log-probabilities depend only on the last token."""
    table = jnp.log(jnp.asarray(table, jnp.float32))

    def prefill(params, prompt, mask):
        del params, mask
        last = prompt[:, -1]
        return table[last], {"last": last}

    def step(params, tokens, cache):
        del params, cache
        return table[tokens], {"last": tokens}

    return prefill, step


def run(prefill, step, prompt, cfg, rng=0):
    prompt = jnp.asarray(prompt, jnp.int32)
    mask = jnp.ones_like(prompt, bool)
    if cfg.num_beams > 1:
        fn = jax.jit(lambda p, m: beam_search(prefill, step, None, p, m, cfg))
        return fn(prompt, mask)
    fn = jax.jit(lambda p, m, r: sample(prefill, step, None, p, m, r, cfg))
    return fn(prompt, mask, jax.random.PRNGKey(rng))


# Tokens: 0 pad, 1 EOS, 2 A, 3 B. From the start (token 0) A is likelier than B, but B is
# almost always followed by EOS, so the best two-token answer is "B EOS", which greedy misses.
TABLE = np.array(
    [
        [1e-9, 0.10, 0.50, 0.40],  # after pad (the prompt)
        [0.97, 0.01, 0.01, 0.01],  # after EOS
        [1e-9, 0.30, 0.35, 0.35],  # after A
        [1e-9, 0.90, 0.05, 0.05],  # after B
    ]
)
TABLE = TABLE / TABLE.sum(1, keepdims=True)


def test_greedy_takes_the_argmax_each_step():
    prefill, step = markov(TABLE)
    tokens, lengths = run(prefill, step, [[0]], DecodeConfig(max_new_tokens=2, eos_id=EOS))
    assert tokens.tolist() == [[2, 2]] or tokens.tolist() == [[2, 3]]
    assert lengths.tolist() == [2]


def test_beam_search_finds_the_known_best_sequence():
    prefill, step = markov(TABLE)
    cfg = DecodeConfig(max_new_tokens=2, num_beams=2, length_penalty=0.0, eos_id=EOS)
    tokens, lengths, score = run(prefill, step, [[0]], cfg)
    assert tokens.tolist() == [[3, 1]]
    assert lengths.tolist() == [2]
    assert float(score[0]) == pytest.approx(math.log(TABLE[0, 3] * TABLE[3, 1]), rel=1e-5)


def _brute_force_best(table, max_new, length_penalty):
    """The exact best hypothesis by enumeration (EOS ends a hypothesis)."""
    vocab = table.shape[0]
    best, best_score = None, -np.inf
    for n in range(1, max_new + 1):
        for seq in itertools.product(range(vocab), repeat=n):
            if EOS in seq[:-1] or (n < max_new and seq[-1] != EOS):
                continue
            logp, last = 0.0, 0
            for tok in seq:
                logp += math.log(table[last, tok])
                last = tok
            score = logp / n**length_penalty
            if score > best_score:
                best, best_score = seq, score
    return list(best), best_score


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_wide_beam_equals_exhaustive_search(length_penalty):
    rng = np.random.default_rng(3)
    table = rng.dirichlet(np.ones(4) * 0.7, size=4)
    prefill, step = markov(table)
    cfg = DecodeConfig(max_new_tokens=3, num_beams=16, length_penalty=length_penalty, eos_id=EOS)
    tokens, lengths, score = run(prefill, step, [[0]], cfg)
    best, best_score = _brute_force_best(table, 3, length_penalty)
    assert tokens[0, : int(lengths[0])].tolist() == best
    assert float(score[0]) == pytest.approx(best_score, rel=1e-4)


def test_beam_one_equals_greedy():
    rng = np.random.default_rng(4)
    table = rng.dirichlet(np.ones(6), size=6)
    prefill, step = markov(table)
    prompt = jnp.array([[0], [2], [5]], jnp.int32)
    mask = jnp.ones_like(prompt, bool)
    greedy, _ = run(prefill, step, prompt, DecodeConfig(max_new_tokens=5, eos_id=-1))
    cfg = DecodeConfig(max_new_tokens=5, num_beams=1, eos_id=-1)
    beam, _, _ = jax.jit(lambda p, m: beam_search(prefill, step, None, p, m, cfg))(prompt, mask)
    np.testing.assert_array_equal(greedy, beam)


def test_eos_stops_a_row_and_pads_after_it():
    table = np.full((4, 4), 1e-6)
    table[0, 2] = 1.0  # start -> A
    table[2, 1] = 1.0  # A -> EOS
    table[1, 0] = 1.0
    table[3, 3] = 1.0  # B -> B forever
    table = table / table.sum(1, keepdims=True)
    prefill, step = markov(table)
    tokens, lengths = run(prefill, step, [[0], [3]], DecodeConfig(max_new_tokens=4, eos_id=EOS))
    assert tokens.tolist() == [[2, 1, 0, 0], [3, 3, 3, 3]]
    assert lengths.tolist() == [2, 4]


def test_sampling_is_reproducible_and_seed_dependent():
    rng = np.random.default_rng(5)
    table = rng.dirichlet(np.ones(8), size=8)
    prefill, step = markov(table)
    cfg = DecodeConfig(max_new_tokens=12, temperature=1.0, eos_id=-1)
    prompt = [[0]] * 4
    a, _ = run(prefill, step, prompt, cfg, rng=7)
    b, _ = run(prefill, step, prompt, cfg, rng=7)
    c, _ = run(prefill, step, prompt, cfg, rng=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_top_k_one_equals_greedy():
    rng = np.random.default_rng(6)
    table = rng.dirichlet(np.ones(8), size=8)
    prefill, step = markov(table)
    greedy, _ = run(prefill, step, [[0], [3]], DecodeConfig(max_new_tokens=6, eos_id=-1))
    topk, _ = run(
        prefill,
        step,
        [[0], [3]],
        DecodeConfig(max_new_tokens=6, temperature=0.8, top_k=1, eos_id=-1),
        rng=11,
    )
    np.testing.assert_array_equal(greedy, topk)


def test_top_p_keeps_exactly_the_smallest_nucleus():
    probs = jnp.array([[0.05, 0.4, 0.1, 0.3, 0.15]])
    logits = jnp.log(probs)
    kept = filter_logits(logits, top_p=0.7) > -1e9
    # 0.4 + 0.3 = 0.7 reaches p: the nucleus is {1, 3}.
    assert kept.tolist() == [[False, True, False, True, False]]
    kept = filter_logits(logits, top_p=0.71) > -1e9
    assert kept.tolist() == [[False, True, False, True, True]]  # + 0.15 (next likeliest)
    kept = filter_logits(logits, top_p=0.1) > -1e9
    assert kept.tolist() == [[False, True, False, False, False]]  # the top token always stays


def test_top_k_and_top_p_together():
    probs = jnp.array([[0.05, 0.4, 0.1, 0.3, 0.15]])
    kept = filter_logits(jnp.log(probs), top_k=2, top_p=0.5) > -1e9
    # top-k keeps {1, 3}; the nucleus of those (0.4 already >= 0.5 * ... of the original
    # probabilities) is computed on the renormalised pair: 0.57 >= 0.5 -> {1}.
    assert kept.tolist() == [[False, True, False, False, False]]


def test_samples_only_come_from_the_nucleus():
    probs = np.array([0.05, 0.4, 0.1, 0.3, 0.15])
    table = np.tile(probs, (5, 1))
    prefill, step = markov(table)
    cfg = DecodeConfig(max_new_tokens=50, temperature=1.0, top_p=0.7, eos_id=-1)
    tokens, _ = run(prefill, step, [[0]] * 8, cfg, rng=3)
    assert set(np.unique(tokens)) <= {1, 3}


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="top_p"):
        DecodeConfig(top_p=0.0)
    with pytest.raises(ValueError, match="num_beams"):
        DecodeConfig(num_beams=0)
    with pytest.raises(ValueError, match="temperature"):
        DecodeConfig(num_beams=2, temperature=0.7)


def test_greedy_pick_is_argmax_with_ties_to_the_first():
    from ptjax.decoding.search import greedy_pick

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 50)).astype(np.float32)
    logits[1, [3, 7]] = 9.0  # A tie: the first index wins, as argmax.
    logits[2, :] = 0.0
    np.testing.assert_array_equal(greedy_pick(jnp.asarray(logits)), np.argmax(logits, -1))
    assert int(greedy_pick(jnp.full((1, 5), jnp.nan))[0]) < 5  # Never out of range.


@pytest.mark.parametrize("n", [7, 64, 96, 1000])  # chunk 7 (one chunk), 32, 32, 25
def test_chunked_argmax_equals_argmax_with_ties_across_chunks(n):
    from ptjax import argmax

    rng = np.random.default_rng(n)
    x = rng.normal(size=(5, n)).astype(np.float32)
    x[1, [n - 1, 0]] = 7.0  # Tied in the first and the last chunk: the first wins.
    x[2, [n // 2, n // 2 + 1]] = 7.0
    x[3] = -1.0  # All tied.
    x[4, -1] = np.inf
    np.testing.assert_array_equal(argmax.argmax(jnp.asarray(x)), np.argmax(x, -1))
    nan_row = argmax.argmax(jnp.full((2, n), jnp.nan))
    assert ((nan_row >= 0) & (nan_row < n)).all()  # No maximum: still an index in range.
