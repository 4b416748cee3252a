"""Low-rank adapters (ptjax.models.lora) on every family's parameters: the adapted model starts
as the base model exactly, a merged kernel computes the base product plus the low-rank one
(x W + s (x A) B) in each projection's layout, and scanned stacks get one adapter per layer."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptjax.models import bert, gpt, llama, lora, scan, t5

SMALL = dict(vocab_size=61, num_layers=2, num_heads=2, d_ff=32, dropout_rate=0.0)


def _families():
    ids = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) % 61
    yield "gpt", gpt.GPT(gpt.GPTConfig(max_len=16, d_model=16, **SMALL)), (ids,)
    yield "bert", bert.BertForPretraining(bert.BertConfig(max_len=16, d_model=16, **SMALL)), (ids,)
    cfg = t5.T5Config(d_model=16, d_kv=8, num_decoder_layers=2, **SMALL)
    yield "t5", t5.T5(cfg), (ids, ids)
    cfg = llama.LlamaConfig(max_len=16, d_model=16, num_kv_heads=1, **SMALL)
    yield "llama", llama.Llama(cfg), (ids,)


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
@pytest.mark.parametrize("family", ["gpt", "bert", "t5", "llama"])
def test_adapted_model_starts_as_the_base_model_and_learns_through_the_adapters(family):
    name, model, inputs = next(f for f in _families() if f[0] == family)
    params = model.init(jax.random.PRNGKey(0), *inputs)["params"]
    spec = lora.LoraSpec(rank=4, alpha=8.0, targets=("query", "value", "out", "wo"))
    tree = lora.adapters(jax.random.PRNGKey(1), params, spec)
    assert len(tree) >= 8 and all(not np.any(a["b"]) for a in tree.values())
    merged = lora.merge(params, tree, spec)
    base = model.apply({"params": params}, *inputs)
    np.testing.assert_array_equal(model.apply({"params": merged}, *inputs), base)

    def loss(adapter_tree):
        out = model.apply({"params": lora.merge(params, adapter_tree, spec)}, *inputs)
        return jnp.mean(jnp.square(out if not isinstance(out, tuple) else out[0]))

    grads = jax.grad(loss)(tree)
    assert any(np.any(g["b"]) for g in grads.values())  # Gradients reach B (A's are 0: B = 0).
    total = lora.trainable_count(tree)
    assert 0 < total < sum(x.size for x in jax.tree.leaves(params)) / 2


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
@pytest.mark.parametrize("module", ["attn/query", "attn/out", "mlp/wi"])
def test_a_merged_kernel_adds_the_low_rank_product_in_its_layout(module):
    model = gpt.GPT(gpt.GPTConfig(max_len=16, d_model=16, **SMALL))
    ids = jnp.zeros((1, 4), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), ids)["params"]
    target = module.split("/")[1]
    spec = lora.LoraSpec(rank=3, alpha=6.0, targets=(target,))
    tree = lora.adapters(jax.random.PRNGKey(1), params, spec)
    tree = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(2), x.shape), tree)
    name = f"h_0/{module}/kernel"
    kernel = params["h_0"][module.split("/")[0]][target]["kernel"]
    merged = lora.merge(params, tree, spec)["h_0"][module.split("/")[0]][target]["kernel"]
    a, b = tree[name]["a"], tree[name]["b"]
    n_in = a.shape[0]
    x = jax.random.normal(jax.random.PRNGKey(3), (5, n_in))
    want = x @ kernel.reshape(n_in, -1) + spec.scale * (x @ a) @ b
    np.testing.assert_allclose(x @ merged.reshape(n_in, -1), want, atol=1e-5)
    assert (module == "attn/out") == (kernel.ndim == 3 and kernel.shape[:2] == (2, 8))


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_a_scanned_stack_gets_one_adapter_per_layer():
    cfg = llama.LlamaConfig(max_len=16, d_model=16, num_kv_heads=1, **SMALL)
    ids = jnp.zeros((1, 4), jnp.int32)
    params = llama.Llama(cfg).init(jax.random.PRNGKey(0), ids)["params"]
    stacked = scan.stack_layers(params)
    spec = lora.LoraSpec(rank=2, alpha=2.0, targets=("query", "wo"))
    tree = lora.adapters(jax.random.PRNGKey(1), stacked, spec)
    assert tree["h/attn/query/kernel"]["a"].shape == (2, 16, 2)
    assert tree["h/mlp/wo/kernel"]["b"].shape == (2, 2, 16)
    tree = jax.tree.map(lambda x: x + 0.05, tree)
    per_layer = {
        f"h_{i}/{name[2:]}": jax.tree.map(lambda x, i=i: x[i], adapter)
        for name, adapter in tree.items()
        for i in range(2)
    }
    want = lora.merge(params, per_layer, spec)
    got = scan.unstack_layers(lora.merge(stacked, tree, spec))
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-6), got, want)
    scanned = llama.Llama(dataclasses.replace(cfg, scan_layers=True))
    np.testing.assert_allclose(
        scanned.apply({"params": lora.merge(stacked, tree, spec)}, ids),
        llama.Llama(cfg).apply({"params": want}, ids),
        atol=1e-5,
    )


def test_bad_specs_are_named():
    with pytest.raises(ValueError, match="rank=0"):
        lora.LoraSpec(rank=0, alpha=1.0)
    with pytest.raises(ValueError, match="'qkv'"):
        lora.spec_from(4, 8.0, "query,qkv")
    params = {"wte": {"embedding": jnp.zeros((4, 2))}}
    with pytest.raises(ValueError, match="No kernel"):
        lora.targeted(params, lora.LoraSpec(rank=2, alpha=2.0))
