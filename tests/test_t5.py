"""T5: parameter counts and numerical parity with Hugging Face, masks, packing, decoding caches."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptjax.decoding import DecodeConfig, beam_search, sample
from ptjax.interop import hf_t5
from ptjax.models import layers, relative_position, t5, t5_decoding

VOCAB = 101
VARIANTS = {"v1_0": ("relu", True), "v1_1": ("gated-gelu", False)}


def _tiny(variant: str = "v1_0", **kw) -> t5.T5Config:
    feed_forward, tied = VARIANTS[variant]
    params = dict(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=3,
        num_heads=4,
        # Few buckets and a short max distance, so 24-token inputs reach the log-spaced and the
        # clamped buckets.
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        feed_forward=feed_forward,
        tie_word_embeddings=tied,
        max_len=64,
    )
    params.update(kw)
    return t5.T5Config(**params)


def _apply(model: t5.T5):
    """model.apply under jit: eager linen compiles every op anew for each input shape."""
    return jax.jit(model.apply, static_argnames=("method", "deterministic"))


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _hf():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return torch, transformers


def _hf_config(transformers, cfg: t5.T5Config):
    return transformers.T5Config(
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        d_kv=cfg.d_kv,
        d_ff=cfg.d_ff,
        num_layers=cfg.num_layers,
        num_decoder_layers=cfg.num_decoder_layers,
        num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance,
        feed_forward_proj=cfg.feed_forward,
        tie_word_embeddings=cfg.tie_word_embeddings,
        attn_implementation="eager",
    )


def _untie(torch, hf, cfg: t5.T5Config) -> None:
    """transformers 5 ties lm_head to `shared` even for tie_word_embeddings=False (it only turns
    off the output scaling); a v1.1 checkpoint has its own lm_head, so give it one."""
    if not cfg.tie_word_embeddings:
        hf.lm_head.weight = torch.nn.Parameter(torch.empty(cfg.vocab_size, cfg.d_model))


def _hf_model(cfg: t5.T5Config, seed: int = 0, noise: float = 0.05):
    """A random HF T5 and the same weights as params.

    Every weight gets `noise` * N(0, 1) added (norm scales too, away from HF's 1); the embedding
    and lm_head only 0.05, so that a large `noise` makes the layers, not the embedding of the
    last token, decide the next token.
    """
    torch, transformers = _hf()
    torch.manual_seed(seed)
    hf = transformers.T5ForConditionalGeneration(_hf_config(transformers, cfg))
    _untie(torch, hf, cfg)
    with torch.no_grad():
        if not cfg.tie_word_embeddings:
            hf.lm_head.weight.normal_(0.0, cfg.d_model**-0.5)
        for name, p in hf.named_parameters():
            embedding = name.startswith(("shared", "lm_head"))
            p.add_((0.05 if embedding else noise) * torch.randn_like(p))
    params = jax.tree.map(jnp.asarray, hf_t5.params_from_hf(hf.state_dict(), cfg))
    return hf.eval(), params


def _batch(seed: int = 0, batch: int = 3, src_len: int = 24, tgt_len: int = 20):
    """Inputs, targets (shifted right after 0) and masks; rows 1 and 2 are padded."""
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, VOCAB, (batch, src_len))
    dec = rng.integers(2, VOCAB, (batch, tgt_len))
    dec[:, 0] = t5.DECODER_START_ID
    enc_mask = np.ones((batch, src_len), np.int64)
    enc_mask[1, src_len - 9 :] = 0
    enc_mask[2, src_len - 4 :] = 0
    dec_mask = np.ones((batch, tgt_len), np.int64)
    dec_mask[1, tgt_len - 8 :] = 0
    return enc * enc_mask, dec * dec_mask, enc_mask, dec_mask


@functools.cache
def _tiny_model(variant: str, **kw):
    """(config, HF model, params) of a tiny random model; random params come from HF's init,
    which is much faster than compiling linen's (threefry) init."""
    cfg = _tiny(variant, **kw)
    return (cfg, *_hf_model(cfg))


@pytest.fixture(params=list(VARIANTS))
def hf_and_params(request):
    return _tiny_model(request.param)


@pytest.mark.parametrize(
    "size,expected",
    [
        ("small", 60_506_624),
        ("base", 222_903_552),
        ("large", 737_668_096),
        ("v1_1_small", 76_961_152),
        ("v1_1_base", 247_577_856),
        ("v1_1_large", 783_150_080),
    ],
)
def test_parameter_counts_match_hugging_face(size, expected):
    """Published T5 / T5 1.1 sizes; HF's count for the same config, built on the meta device."""
    torch, transformers = _hf()
    cfg = t5.T5Config(**t5.SIZES[size])
    with torch.device("meta"):  # Shapes only: no memory, no init time.
        hf = transformers.T5ForConditionalGeneration(_hf_config(transformers, cfg))
        _untie(torch, hf, cfg)
    assert sum(p.numel() for p in hf.parameters()) == expected
    ids = jnp.zeros((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda: t5.T5(cfg).init(jax.random.PRNGKey(0), ids, ids))
    assert _count(shapes["params"]) == expected


def test_relative_position_buckets_equal_hugging_face():
    torch, _ = _hf()
    from transformers.models.t5.modeling_t5 import T5Attention

    for buckets, max_distance in ((32, 128), (8, 16)):
        relative = np.arange(-3 * max_distance, 3 * max_distance)
        for bidirectional in (True, False):
            expected = T5Attention._relative_position_bucket(
                torch.tensor(relative),
                bidirectional=bidirectional,
                num_buckets=buckets,
                max_distance=max_distance,
            ).numpy()
            got = relative_position.relative_position_bucket(
                jnp.asarray(relative),
                bidirectional=bidirectional,
                num_buckets=buckets,
                max_distance=max_distance,
            )
            np.testing.assert_array_equal(got, expected)


def test_parity_with_hugging_face_logits_and_encoder(hf_and_params):
    torch, _ = _hf()
    cfg, hf, params = hf_and_params
    enc, dec, enc_mask, dec_mask = _batch()
    with torch.no_grad():
        out = hf(
            input_ids=torch.tensor(enc),
            attention_mask=torch.tensor(enc_mask),
            decoder_input_ids=torch.tensor(dec),
            decoder_attention_mask=torch.tensor(dec_mask),
        )
    model = t5.T5(cfg)
    apply = _apply(model)
    logits = apply({"params": params}, enc, dec, enc_mask, dec_mask)
    encoded = apply({"params": params}, enc, enc_mask, method=t5.T5.encode)
    assert logits.shape == (3, 20, VOCAB) and logits.dtype == jnp.float32
    real_dec, real_enc = dec_mask.astype(bool), enc_mask.astype(bool)
    logits_diff = np.abs(np.asarray(logits) - out.logits.numpy())[real_dec]
    encoder_diff = np.abs(np.asarray(encoded) - out.encoder_last_hidden_state.numpy())[real_enc]
    assert logits_diff.max() < 1e-4, logits_diff.max()
    assert encoder_diff.max() < 1e-4, encoder_diff.max()


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_cached_decoding_equals_the_full_forward(hf_and_params):
    cfg, _, params = hf_and_params
    model = t5.T5(cfg)
    apply = _apply(model)
    enc, dec, enc_mask, _ = _batch(seed=1)
    full = apply({"params": params}, enc, dec, enc_mask)  # [batch, tgt_len, vocab]
    prefill, step = t5_decoding.decode_fns(model, max_new_tokens=dec.shape[1])
    # The loops' layout (a tied head also transposed); raw params are decoded in the HF tests.
    prepared = t5_decoding.prepare_decode_params(params)
    assert (len(prepared) > len(params)) == cfg.tie_word_embeddings
    assert set(prepared["decoder"]["layer_0"]["self_attention"]) == {layers.FUSED_QKV, "out"}
    logits, cache = jax.jit(prefill)(prepared, jnp.asarray(enc), jnp.asarray(enc_mask, bool))
    for leaf in jax.tree.leaves(cache):
        assert leaf.shape[0] == 3  # Beam search gathers every leaf along the batch.
    np.testing.assert_allclose(logits, full[:, 0], atol=1e-5, rtol=1e-5)
    step = jax.jit(step)
    for t in range(1, dec.shape[1]):
        logits, cache = step(prepared, jnp.asarray(dec[:, t]), cache)
        np.testing.assert_allclose(logits, full[:, t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_decoding_equals_hugging_face_generate(variant):
    torch, _ = _hf()
    # transformers 5 sizes its generation cache by num_layers, so the stacks are equal here.
    cfg = _tiny(variant, num_decoder_layers=2)
    hf, params = _hf_model(cfg, seed=2, noise=0.5)
    enc, _, enc_mask, _ = _batch(seed=2, src_len=12)
    max_new = 12
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(enc),
            attention_mask=torch.tensor(enc_mask),
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new,
            min_new_tokens=max_new,
            eos_token_id=None,  # Never stops early (and never suppresses a token).
            decoder_start_token_id=t5.DECODER_START_ID,
            output_scores=True,
            return_dict_in_generate=True,
        )
    expected = out.sequences.numpy()
    top2 = np.sort(torch.stack(out.scores, 1).numpy(), axis=-1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0]).min() > 1e-3  # No near-ties to flip on rounding.
    prefill, step = t5_decoding.decode_fns(t5.T5(cfg), max_new)
    decode = DecodeConfig(max_new_tokens=max_new, eos_id=-1)
    tokens, lengths = jax.jit(
        lambda p, x, m: sample(prefill, step, p, x, m, jax.random.PRNGKey(0), decode)
    )(params, jnp.asarray(enc), jnp.asarray(enc_mask, bool))
    assert expected[:, 0].tolist() == [t5.DECODER_START_ID] * 3
    assert len(set(expected[:, 1:].ravel().tolist())) > 6  # Not a degenerate model.
    np.testing.assert_array_equal(tokens, expected[:, 1:])
    np.testing.assert_array_equal(lengths, [max_new] * 3)


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_beam_search_score_is_the_sequence_log_probability():
    cfg, _, params = _tiny_model("v1_1")
    model = t5.T5(cfg)
    apply = _apply(model)
    enc, _, enc_mask, _ = _batch(seed=3, src_len=10)
    prefill, step = t5_decoding.decode_fns(model, 4)
    decode = DecodeConfig(max_new_tokens=4, num_beams=3, length_penalty=0.0, eos_id=-1)
    best, _, score = beam_search(
        prefill, step, params, jnp.asarray(enc), jnp.asarray(enc_mask, bool), decode
    )
    dec = jnp.concatenate([jnp.zeros((3, 1), jnp.int32), best[:, :-1]], axis=1)
    logp = jax.nn.log_softmax(apply({"params": params}, enc, dec, enc_mask), axis=-1)
    expected = jnp.take_along_axis(logp, best[..., None], axis=-1)[..., 0].sum(axis=1)
    np.testing.assert_allclose(score, expected, atol=1e-4)


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_packed_examples_equal_each_alone():
    """Row 0 packs two examples (then padding); rows 1 and 2 hold each alone (then padding)."""
    cfg, _, params = _tiny_model("v1_1")
    apply = _apply(t5.T5(cfg))
    rng = np.random.default_rng(4)
    src = [rng.integers(2, VOCAB, n) for n in (9, 6)]
    tgt = [np.concatenate([[0], rng.integers(2, VOCAB, n - 1)]) for n in (5, 7)]

    def rows(parts, width):
        tokens, segments, positions = (np.zeros((3, width), np.int32) for _ in range(3))
        start = 0
        for i, part in enumerate(parts):
            where = slice(start, start + len(part))
            tokens[0, where], segments[0, where] = part, i + 1  # Segment 0: padding.
            positions[0, where] = np.arange(len(part))
            tokens[i + 1, : len(part)], segments[i + 1, : len(part)] = part, 1
            positions[i + 1] = np.arange(width)
            start += len(part)
        return tokens, segments, positions

    enc, enc_seg, enc_pos = rows(src, 18)
    dec, dec_seg, dec_pos = rows(tgt, 14)
    logits = apply(
        {"params": params},
        enc,
        dec,
        enc_seg > 0,
        dec_seg > 0,
        encoder_segment_ids=enc_seg,
        decoder_segment_ids=dec_seg,
        encoder_positions=enc_pos,
        decoder_positions=dec_pos,
    )
    start = 0
    for i, t in enumerate(tgt):
        alone = logits[i + 1, : len(t)]
        np.testing.assert_allclose(logits[0, start : start + len(t)], alone, atol=1e-5)
        start += len(t)
    # Row 1 alone, without segment ids, positions or padding.
    alone = apply({"params": params}, src[0][None], tgt[0][None])[0]
    np.testing.assert_allclose(logits[1, : len(tgt[0])], alone, atol=1e-5)


def test_bidirectional_encoder_causal_decoder_and_padding():
    cfg, _, params = _tiny_model("v1_0")
    apply = _apply(t5.T5(cfg))
    enc, dec, enc_mask, _ = _batch(seed=5)
    encode = lambda x: apply({"params": params}, x, method=t5.T5.encode)
    base = encode(enc)
    changed = encode(np.concatenate([enc[:, :-1], np.full((3, 1), 7)], axis=1))
    assert np.abs(np.asarray(changed[:, 0] - base[:, 0])).max() > 1e-4  # Sees the future.

    logits = apply({"params": params}, enc, dec, enc_mask)
    later = np.concatenate([dec[:, :10], (dec[:, 10:] + 5) % VOCAB], axis=1)
    np.testing.assert_allclose(
        apply({"params": params}, enc, later, enc_mask)[:, :10], logits[:, :10], atol=1e-6
    )  # The decoder does not.
    other_pads = np.where(enc_mask.astype(bool), enc, 3)
    np.testing.assert_allclose(
        apply({"params": params}, other_pads, dec, enc_mask), logits, atol=1e-6
    )  # Padded inputs are invisible.


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_dropout_is_a_call_time_switch():
    cfg, _, params = _tiny_model("v1_0", num_layers=1, num_decoder_layers=1)
    apply = _apply(t5.T5(cfg))
    enc, dec, enc_mask, dec_mask = _batch(seed=6)
    run = lambda det, seed: apply(
        {"params": params},
        enc,
        dec,
        enc_mask,
        dec_mask,
        deterministic=det,
        rngs={"dropout": jax.random.PRNGKey(seed)},
    )
    np.testing.assert_array_equal(run(True, 0), run(True, 1))
    assert np.abs(np.asarray(run(False, 0) - run(False, 1))).max() > 1e-3


def test_params_from_hf_names_what_is_wrong():
    torch, transformers = _hf()
    cfg = _tiny("v1_1", num_decoder_layers=2)
    hf = transformers.T5ForConditionalGeneration(_hf_config(transformers, cfg))
    _untie(torch, hf, cfg)
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    hf_t5.params_from_hf(sd, cfg)  # Complete: converts.
    name = "decoder.block.1.layer.2.DenseReluDense.wi_1.weight"
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        hf_t5.params_from_hf({k: v for k, v in sd.items() if k != name}, cfg)
    with pytest.raises(ValueError, match="has shape"):
        hf_t5.params_from_hf({**sd, name: sd[name][:, :-1]}, cfg)
    with pytest.raises(ValueError, match="unexpected.*decoder.block.2"):
        hf_t5.params_from_hf({**sd, "decoder.block.2.layer.0.layer_norm.weight": sd[name][0]}, cfg)
    with pytest.raises(ValueError, match="lm_head.weight"):
        hf_t5.params_from_hf({k: v for k, v in sd.items() if k != "lm_head.weight"}, cfg)
    with pytest.raises(ValueError, match="wi_0"):  # A v1.0 (relu) state dict for a v1.1 config.
        relu = _tiny("v1_0", num_decoder_layers=2)
        hf_relu = transformers.T5ForConditionalGeneration(_hf_config(transformers, relu))
        hf_t5.params_from_hf(hf_relu.state_dict(), cfg)


def test_flops_per_token_counts_every_matmul_parameter():
    """With one input and one target token attention is negligible: 6 FLOPs per matmul weight."""
    for variant in VARIANTS:
        cfg = _tiny(variant)
        ids = jnp.zeros((1, 4), jnp.int32)
        params = jax.eval_shape(t5.T5(cfg).init, jax.random.PRNGKey(0), ids, ids)
        params = params["params"]
        not_matmul = _count(params["encoder"]["relative_position"]) + _count(
            params["decoder"]["relative_position"]
        )
        not_matmul += sum(
            _count(v) for k, v in jax.tree_util.tree_leaves_with_path(params) if "_ln" in str(k)
        )
        if not cfg.tie_word_embeddings:
            not_matmul += _count(params["shared"])  # Only a look-up; lm_head is the output.
        matmul = _count(params) - not_matmul  # Tied: `shared` counts once, as the output layer.
        attention = 12 * cfg.num_layers + 18 * cfg.num_decoder_layers
        expected = 6 * matmul + attention * cfg.inner_dim
        assert t5.flops_per_token(cfg, 1, 1) == pytest.approx(expected)
        assert t5.flops_per_token(cfg, 64, 16) > t5.flops_per_token(cfg, 16, 16)


def test_lengths_beyond_max_len_are_rejected():
    cfg = _tiny(max_len=8)
    ids = jnp.zeros((1, 9), jnp.int32)
    with pytest.raises(ValueError, match="max_len=8"):
        t5.T5(cfg).init(jax.random.PRNGKey(0), ids, ids[:, :4])
    with pytest.raises(ValueError, match="feed_forward"):
        _tiny(feed_forward="swiglu")


@pytest.mark.parametrize("variant", ["v1_0", "v1_1"])  # Tied (scaled) and separate LM head.
def test_seq2seq_loss_from_hidden_states_equals_cross_entropy_of_the_logits(variant):
    """The seq2seq task's loss takes (hidden, output matrix) and the fused cross-entropy; its
    sums equal optax's cross-entropy and argmax on the model's logits."""
    import optax

    from ptjax.tasks.seq2seq import _loss

    cfg, _, params = _tiny_model(variant)
    model = t5.T5(cfg)
    enc, dec, enc_mask, dec_mask = _batch(seed=5)
    targets = np.roll(dec, -1, axis=1)
    batch = dict(
        encoder_input_tokens=enc,
        decoder_input_tokens=dec,
        decoder_target_tokens=targets,
        encoder_segment_ids=enc_mask,
        decoder_segment_ids=dec_mask,
        encoder_positions=np.broadcast_to(np.arange(enc.shape[1]), enc.shape),
        decoder_positions=np.broadcast_to(np.arange(dec.shape[1]), dec.shape),
        decoder_loss_weights=dec_mask.astype(np.float32),
    )
    _, sums = jax.jit(lambda p, b: _loss(model, p, b, rng=None, train=False))(params, batch)
    logits = _apply(model)({"params": params}, enc, dec, enc_mask, dec_mask)
    weights = batch["decoder_loss_weights"]
    want = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    np.testing.assert_allclose(sums["loss_sum"], np.sum(want * weights), rtol=1e-5)
    correct = np.sum((np.argmax(logits, -1) == targets) * weights)
    assert float(sums["correct"]) == correct and float(sums["weight"]) == weights.sum()
