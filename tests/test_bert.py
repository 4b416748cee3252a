"""BERT encoder: parameter counts and numerical parity with Hugging Face, masking, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptjax import models
from ptjax.interop import hf_bert
from ptjax.models import bert

VOCAB, MAX_LEN = 99, 40


def _tiny(**kw) -> bert.BertConfig:
    params = dict(vocab_size=VOCAB, max_len=MAX_LEN, num_layers=2, num_heads=4, d_model=32, d_ff=64)
    params.update(kw)
    return bert.BertConfig(**params)


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _batch(seed: int = 1, batch: int = 3, length: int = 12):
    """Token ids, segment ids (A then B) and a padding mask with a shorter second row."""
    ids = jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 4, VOCAB)
    types = (jnp.arange(length) >= length // 2).astype(jnp.int32)[None].repeat(batch, 0)
    lengths = jnp.array([length, length - 5] + [length - 2] * (batch - 2))
    mask = (jnp.arange(length)[None] < lengths[:, None]).astype(jnp.int32)
    return ids * mask, types * mask, mask


def _init(cfg: bert.BertConfig):
    model = bert.Bert(cfg)
    ids, types, mask = _batch()
    return model, model.init(jax.random.PRNGKey(0), ids, types, mask)["params"]


def _hf():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return torch, transformers


def _hf_config(transformers, cfg: bert.BertConfig, **kw):
    return transformers.BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.d_ff,
        max_position_embeddings=cfg.max_len,
        type_vocab_size=cfg.type_vocab_size,
        attn_implementation="eager",
        **kw,
    )


def _perturbed(torch, model):
    """Random weights everywhere (HF inits LayerNorms to 1/0 and biases to 0), eval mode."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _torch_inputs(torch, *arrays):
    return [torch.tensor(np.asarray(a), dtype=torch.long) for a in arrays]


def test_base_parameter_count_matches_hugging_face():
    torch, transformers = _hf()
    with torch.device("meta"):  # Shapes only: no memory, no init time.
        hf_model = transformers.BertModel(transformers.BertConfig())
        hf_pretraining = transformers.BertForPreTraining(transformers.BertConfig())
    hf_count = sum(p.numel() for p in hf_model.parameters())
    nsp = sum(p.numel() for p in hf_pretraining.cls.seq_relationship.parameters())
    hf_mlm_count = sum(p.numel() for p in hf_pretraining.parameters()) - nsp
    assert hf_count == 109_482_240  # BERT-base as published for BertModel.

    cfg = bert.BertConfig(**bert.SIZES["base"])
    ids = jnp.zeros((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda: bert.BertForPretraining(cfg).init(jax.random.PRNGKey(0), ids))[
        "params"
    ]
    assert _count(shapes["bert"]) == hf_count
    assert _count(shapes) == hf_mlm_count  # Tied decoder: the head adds transform, LN and bias.


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_parity_with_hugging_face_encoder_and_mlm_head():
    torch, transformers = _hf()
    cfg = _tiny()
    hf = _perturbed(torch, transformers.BertForPreTraining(_hf_config(transformers, cfg)))
    params = jax.tree.map(jnp.asarray, hf_bert.params_from_hf(hf.state_dict(), cfg))
    ids, types, mask = _batch()
    with torch.no_grad():
        t_ids, t_types, t_mask = _torch_inputs(torch, ids, types, mask)
        hf_base = hf.bert(input_ids=t_ids, token_type_ids=t_types, attention_mask=t_mask)
        hf_logits = hf(input_ids=t_ids, token_type_ids=t_types, attention_mask=t_mask)
    out = bert.Bert(cfg).apply({"params": params["bert"]}, ids, types, mask)
    logits = bert.BertForPretraining(cfg).apply({"params": params}, ids, types, mask)

    real = np.asarray(mask, bool)
    hidden_diff = np.abs(np.asarray(out.hidden_states) - hf_base.last_hidden_state.numpy())
    pooled_diff = np.abs(np.asarray(out.pooled) - hf_base.pooler_output.numpy())
    logits_diff = np.abs(np.asarray(logits) - hf_logits.prediction_logits.numpy())
    assert hidden_diff[real].max() < 1e-4
    assert pooled_diff.max() < 1e-4
    assert logits_diff[real].max() < 1e-4
    assert logits.shape == (3, 12, VOCAB) and logits.dtype == jnp.float32


def test_parity_with_hugging_face_classification_and_span_heads():
    torch, transformers = _hf()
    cfg = _tiny(num_layers=1)
    classifier = transformers.BertForSequenceClassification(
        _hf_config(transformers, cfg, num_labels=3)
    )
    classifier = _perturbed(torch, classifier)
    qa = _perturbed(torch, transformers.BertForQuestionAnswering(_hf_config(transformers, cfg)))
    ids, types, mask = _batch(seed=2)
    t_inputs = dict(
        zip(
            ("input_ids", "token_type_ids", "attention_mask"),
            _torch_inputs(torch, ids, types, mask),
            strict=True,
        )
    )
    with torch.no_grad():
        hf_class = classifier(**t_inputs).logits.numpy()
        hf_qa = qa(**t_inputs)

    params = hf_bert.params_from_hf(classifier.state_dict(), cfg)
    logits = bert.BertForClassification(cfg, num_labels=3).apply(
        {"params": params}, ids, types, mask
    )
    np.testing.assert_allclose(logits, hf_class, atol=1e-4)

    model = bert.BertForQuestionAnswering(cfg)
    init = model.init(jax.random.PRNGKey(0), ids)["params"]
    params = hf_bert.params_from_hf(qa.state_dict(), cfg)  # HF's QA model has no pooler.
    assert "pooler" not in params["bert"]
    params["bert"]["pooler"] = init["bert"]["pooler"]
    start, end = model.apply({"params": params}, ids, types, mask)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(start)[real], hf_qa.start_logits.numpy()[real], atol=1e-4)
    np.testing.assert_allclose(np.asarray(end)[real], hf_qa.end_logits.numpy()[real], atol=1e-4)
    assert np.all(np.asarray(start)[~real] <= -1e8)  # Padding can never be a span boundary.


@pytest.mark.parametrize("pre_ln", [False, True])
def test_bidirectional_later_tokens_change_earlier_outputs(pre_ln):
    model, params = _init(_tiny(pre_ln=pre_ln))
    ids, types, _ = _batch()
    base = model.apply({"params": params}, ids, types).hidden_states
    changed = model.apply({"params": params}, ids.at[:, -1].set(3), types).hidden_states
    assert np.all(np.abs(np.asarray(base - changed)[:, 0]).max(axis=-1) > 1e-4)


def test_padding_does_not_change_real_positions():
    model, params = _init(_tiny())
    ids, types, mask = _batch()
    base = model.apply({"params": params}, ids, types, mask)
    # Different pad ids, and four more padded positions, leave the real positions unchanged.
    noisy_ids = jnp.where(mask == 1, ids, 7)
    longer = [jnp.pad(a, ((0, 0), (0, 4))) for a in (noisy_ids, types, mask)]
    other = model.apply({"params": params}, *longer)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(
        np.asarray(other.hidden_states)[:, :12][real],
        np.asarray(base.hidden_states)[real],
        atol=1e-5,
    )
    np.testing.assert_allclose(other.pooled, base.pooled, atol=1e-5)


def test_dropout_is_an_apply_time_switch():
    model, params = _init(_tiny(dropout_rate=0.1))
    ids, types, mask = _batch()

    def run(rng=None, deterministic=True):
        rngs = None if rng is None else {"dropout": jax.random.PRNGKey(rng)}
        out = model.apply(
            {"params": params}, ids, types, mask, deterministic=deterministic, rngs=rngs
        )
        return np.asarray(out.hidden_states)

    np.testing.assert_array_equal(run(), run(rng=5))  # Deterministic ignores the RNG.
    train_a, train_b = run(rng=5, deterministic=False), run(rng=6, deterministic=False)
    assert np.abs(train_a - run()).max() > 1e-3
    assert np.abs(train_a - train_b).max() > 1e-3
    np.testing.assert_array_equal(train_a, run(rng=5, deterministic=False))


def test_mlm_positions_gather_the_same_logits():
    cfg = _tiny(pre_ln=True)
    model = bert.BertForPretraining(cfg)
    ids, types, mask = _batch()
    params = model.init(jax.random.PRNGKey(0), ids)["params"]
    assert "final_ln" in params["bert"]
    full = model.apply({"params": params}, ids, types, mask)
    positions = jnp.array([[0, 5, 11], [1, 2, 3], [4, 4, 9]])
    picked = model.apply({"params": params}, ids, types, mask, mlm_positions=positions)
    assert picked.shape == (3, 3, VOCAB)
    np.testing.assert_allclose(
        picked, jnp.take_along_axis(full, positions[..., None], axis=1), atol=1e-5
    )


def test_registry_and_flops():
    family = models.MODELS["bert"]
    assert family.module is bert.BertForPretraining and family.decode_fns is None
    assert {"tiny", "mini", "small", "base", "large"} <= set(family.sizes)
    cfg = bert.BertConfig(**bert.SIZES["base"])
    d, layers_, vocab = 768, 12, 30522
    expected = 6 * (layers_ * 12 * d * d + d * d + vocab * d) + 12 * layers_ * 128 * d
    assert bert.flops_per_token(cfg, 128) == pytest.approx(expected)
