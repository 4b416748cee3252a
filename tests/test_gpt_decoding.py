"""GPT's KV cache: cached decoding equals full recomputation; padding changes nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptjax.decoding import DecodeConfig, beam_search, sample
from ptjax.models import gpt, layers

VOCAB = 53


@pytest.fixture(scope="module")
def model_and_params():
    cfg = gpt.GPTConfig(
        vocab_size=VOCAB,
        max_len=64,
        num_layers=2,
        num_heads=4,
        d_model=32,
        d_ff=64,
        dropout_rate=0.1,
    )
    model = gpt.GPT(cfg)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    # Sharpen the output distribution so greedy choices are not near-ties.
    params = jax.tree.map(lambda x: x * 3.0, params)
    return model, params


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
@pytest.mark.parametrize("prepared", [False, True], ids=["params", "decode_params"])
def test_cached_logits_equal_full_recomputation(model_and_params, prepared):
    model, params = model_and_params
    rng = np.random.default_rng(0)
    seq = jnp.asarray(rng.integers(2, VOCAB, (2, 20)), jnp.int32)
    full = model.apply({"params": params}, seq)  # [2, 20, vocab]
    prefill, step = gpt.decode_fns(model, max_new_tokens=12)
    prompt = seq[:, :8]
    decode_params = gpt.prepare_decode_params(params) if prepared else params
    if prepared:  # Each block's query/key/value as one projection: the fused path is tested.
        assert set(decode_params["h_0"]["attn"]) == {layers.FUSED_QKV, "out"}
    logits, cache = prefill(decode_params, prompt, jnp.ones_like(prompt, bool))
    np.testing.assert_allclose(logits, full[:, 7], atol=1e-5, rtol=1e-5)
    for t in range(8, 20):
        logits, cache = step(decode_params, seq[:, t], cache)
        np.testing.assert_allclose(logits, full[:, t], atol=1e-5, rtol=1e-5)


def _left_pad(rows, pad=0):
    width = max(len(r) for r in rows)
    tokens = np.full((len(rows), width), pad, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        tokens[i, width - len(r) :] = r
        mask[i, width - len(r) :] = True
    return jnp.asarray(tokens), jnp.asarray(mask)


def _greedy(model, params, rows, max_new=10):
    prefill, step = gpt.decode_fns(model, max_new)
    tokens, mask = _left_pad(rows)
    cfg = DecodeConfig(max_new_tokens=max_new, eos_id=-1)
    out, _ = jax.jit(lambda p, t, m: sample(prefill, step, p, t, m, jax.random.PRNGKey(0), cfg))(
        params, tokens, mask
    )
    return np.asarray(out)


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_greedy_equals_argmax_of_the_full_forward(model_and_params):
    model, params = model_and_params
    prompt = [5, 9, 13, 2, 40]
    out = _greedy(model, params, [prompt], max_new=8)[0]
    seq = list(prompt)
    for _ in range(8):
        logits = model.apply({"params": params}, jnp.asarray([seq], jnp.int32))
        seq.append(int(jnp.argmax(logits[0, -1])))
    assert out.tolist() == seq[len(prompt) :]


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_padding_in_a_batch_changes_no_row(model_and_params):
    model, params = model_and_params
    rows = [[5, 9, 13], [7, 3, 11, 19, 23, 29, 31], [4]]
    batched = _greedy(model, params, rows)
    for i, row in enumerate(rows):
        alone = _greedy(model, params, [row])[0]
        np.testing.assert_array_equal(batched[i], alone)


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_beam_search_on_gpt_with_one_beam_equals_greedy(model_and_params):
    model, params = model_and_params
    rows = [[5, 9, 13], [7, 3, 11, 19]]
    tokens, mask = _left_pad(rows)
    prefill, step = gpt.decode_fns(model, 6)
    cfg = DecodeConfig(max_new_tokens=6, num_beams=1, eos_id=-1)
    beam, _, _ = beam_search(prefill, step, params, tokens, mask, cfg)
    np.testing.assert_array_equal(beam, _greedy(model, params, rows, max_new=6))


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_beam_search_score_is_the_sequence_log_probability(model_and_params):
    model, params = model_and_params
    prompt = [5, 9, 13]
    tokens, mask = _left_pad([prompt])
    prefill, step = gpt.decode_fns(model, 4)
    cfg = DecodeConfig(max_new_tokens=4, num_beams=4, length_penalty=0.0, eos_id=-1)
    best, lengths, score = beam_search(prefill, step, params, tokens, mask, cfg)
    seq = jnp.asarray([prompt + best[0].tolist()], jnp.int32)
    logp = jax.nn.log_softmax(model.apply({"params": params}, seq)[0], axis=-1)
    expected = sum(float(logp[len(prompt) - 1 + i, seq[0, len(prompt) + i]]) for i in range(4))
    assert float(score[0]) == pytest.approx(expected, abs=1e-4)
    greedy = _greedy(model, params, [prompt], max_new=4)[0]
    g_seq = jnp.asarray([prompt + greedy.tolist()], jnp.int32)
    g_logp = jax.nn.log_softmax(model.apply({"params": params}, g_seq)[0], axis=-1)
    greedy_score = sum(
        float(g_logp[len(prompt) - 1 + i, g_seq[0, len(prompt) + i]]) for i in range(4)
    )
    assert float(score[0]) >= greedy_score - 1e-5
