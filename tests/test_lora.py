"""Low-rank adapters (ptjax.models.lora) in every family's projections: an adapted model starts
as the base model exactly; applied unmerged (x W + s (x A) B inside each projection) it equals
the merged model (W + s A B) within 1e-5, in each projection's layout; scanned stacks get one
adapter per layer; adapter dropout draws from the 'dropout' stream in training only."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ptjax.models import bert, gpt, llama, lora, scan, t5

SMALL = dict(vocab_size=61, num_layers=2, num_heads=2, d_ff=32, dropout_rate=0.0)
ALL = ("query", "key", "value", "out", "wi", "wi_0", "wi_1", "wo")


def _family(name):
    ids = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) % 61
    if name == "gpt":
        return gpt.GPT(gpt.GPTConfig(max_len=16, d_model=16, **SMALL)), (ids,)
    if name == "bert":
        return bert.BertForPretraining(bert.BertConfig(max_len=16, d_model=16, **SMALL)), (ids,)
    if name == "t5":
        cfg = t5.T5Config(d_model=16, d_kv=8, num_decoder_layers=2, **SMALL)
        return t5.T5(cfg), (ids, ids)
    cfg = llama.LlamaConfig(max_len=16, d_model=16, num_kv_heads=1, **SMALL)
    return llama.Llama(cfg), (ids,)


def _output(out):
    return out[0] if isinstance(out, tuple) else out


def _perturbed(tree, key=2, scale=0.1):
    """Non-zero adapters (B starts at zero, which would hide a wrong product)."""
    flat = traverse_util.flatten_dict(tree)
    keys = jax.random.split(jax.random.PRNGKey(key), len(flat))
    return traverse_util.unflatten_dict(
        {
            p: x + scale * jax.random.normal(k, x.shape) if lora.is_adapter(p) else x
            for (p, x), k in zip(sorted(flat.items()), keys, strict=True)
        }
    )


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
@pytest.mark.parametrize("family", ["gpt", "bert", "t5", "llama"])
def test_adapted_model_starts_as_the_base_model_and_unmerged_equals_merged(family):
    model, inputs = _family(family)
    params = model.init(jax.random.PRNGKey(0), *inputs)["params"]
    spec = lora.LoraSpec(rank=4, alpha=8.0, targets=ALL)
    adapted = lora.add_adapters(jax.random.PRNGKey(1), params, spec)
    adapters = lora.adapters(jax.random.PRNGKey(1), params, spec)
    assert len(traverse_util.flatten_dict(adapters)) >= 12
    assert 0 < lora.adapter_count(adapted) < sum(x.size for x in jax.tree.leaves(params)) / 2
    base = _output(model.apply({"params": params}, *inputs))
    with lora.applied(spec, train=False):
        start = _output(model.apply({"params": adapted}, *inputs))
    np.testing.assert_array_equal(start, base)  # B = 0: exactly the base model.

    adapted = _perturbed(adapted)
    with lora.applied(spec, train=False):
        unmerged = _output(model.apply({"params": adapted}, *inputs))
    merged = _output(model.apply({"params": lora.merge(adapted, spec)}, *inputs))
    assert np.max(np.abs(unmerged - base)) > 1e-3  # The adapters change the outputs...
    np.testing.assert_allclose(unmerged, merged, atol=1e-5)  # ... as the merged kernels do.


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_gradients_reach_the_adapters_and_merge_leaves_a_plain_tree():
    model, inputs = _family("gpt")
    params = model.init(jax.random.PRNGKey(0), *inputs)["params"]
    spec = lora.LoraSpec(rank=2, alpha=4.0, targets=("query", "wo"))
    adapters = lora.adapters(jax.random.PRNGKey(1), params, spec)

    def loss(adapter_tree):
        full = lora.add_adapters(jax.random.PRNGKey(9), params, spec)  # Replaced just below.
        flat = dict(traverse_util.flatten_dict(full))
        flat.update(traverse_util.flatten_dict(adapter_tree))
        with lora.applied(spec, train=False):
            out = model.apply({"params": traverse_util.unflatten_dict(flat)}, *inputs)
        return jnp.mean(jnp.square(_output(out)))

    grads = traverse_util.flatten_dict(jax.grad(loss)(adapters))
    assert all(np.any(g) for p, g in grads.items() if p[-1] == lora.B)  # A's are 0 while B = 0.
    merged = lora.merge(lora.add_adapters(jax.random.PRNGKey(1), params, spec), spec)
    assert jax.tree.structure(merged) == jax.tree.structure(params)


@pytest.mark.parametrize("module", ["attn/query", "attn/out", "mlp/wi"])
def test_a_merged_kernel_adds_the_low_rank_product_in_its_layout(module):
    model, inputs = _family("gpt")
    params = model.init(jax.random.PRNGKey(0), *inputs)["params"]
    outer, target = module.split("/")
    spec = lora.LoraSpec(rank=3, alpha=6.0, targets=(target,))
    adapted = _perturbed(lora.add_adapters(jax.random.PRNGKey(1), params, spec))
    layer = adapted["h_0"][outer][target]
    kernel, a, b = layer["kernel"], layer[lora.A], layer[lora.B]
    merged = lora.merge(adapted, spec)["h_0"][outer][target]["kernel"]
    n_in = a.shape[0]
    x = jax.random.normal(jax.random.PRNGKey(3), (5, n_in))
    want = x @ kernel.reshape(n_in, -1) + spec.scale * (x @ a) @ b
    np.testing.assert_allclose(x @ merged.reshape(n_in, -1), want, atol=1e-5)
    assert (module == "attn/out") == (kernel.ndim == 3 and kernel.shape[:2] == (2, 8))


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_a_scanned_stack_gets_one_adapter_per_layer():
    cfg = llama.LlamaConfig(max_len=16, d_model=16, num_kv_heads=1, **SMALL)
    ids = jnp.arange(8, dtype=jnp.int32).reshape(2, 4)
    params = llama.Llama(cfg).init(jax.random.PRNGKey(0), ids)["params"]
    spec = lora.LoraSpec(rank=2, alpha=2.0, targets=("query", "out", "wo"))
    stacked = _perturbed(lora.add_adapters(jax.random.PRNGKey(1), scan.stack_layers(params), spec))
    assert stacked["h"]["attn"]["query"][lora.A].shape == (2, 16, 2)
    assert stacked["h"]["attn"]["out"][lora.A].shape == (2, 16, 2)  # [heads x head_dim, rank]
    assert stacked["h"]["mlp"]["wo"][lora.B].shape == (2, 2, 16)
    per_layer = scan.unstack_layers(stacked)
    np.testing.assert_allclose(
        scan.unstack_layers(lora.merge(stacked, spec))["h_1"]["mlp"]["wo"]["kernel"],
        lora.merge(per_layer, spec)["h_1"]["mlp"]["wo"]["kernel"],
        atol=1e-6,
    )
    scanned = llama.Llama(dataclasses.replace(cfg, scan_layers=True))
    with lora.applied(spec, train=False):
        got = scanned.apply({"params": stacked}, ids)
    want = llama.Llama(cfg).apply({"params": lora.merge(per_layer, spec)}, ids)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_adapter_dropout_is_drawn_in_training_only():
    model, inputs = _family("bert")
    params = model.init(jax.random.PRNGKey(0), *inputs)["params"]
    spec = lora.LoraSpec(rank=4, alpha=8.0, targets=("query",), dropout=0.5)
    adapted = _perturbed(lora.add_adapters(jax.random.PRNGKey(1), params, spec), scale=1.0)

    def run(train, key=0):
        with lora.applied(spec, train=train):
            rngs = {"dropout": jax.random.PRNGKey(key)}
            return _output(model.apply({"params": adapted}, *inputs, rngs=rngs))

    merged = _output(model.apply({"params": lora.merge(adapted, spec)}, *inputs))
    np.testing.assert_allclose(run(False), merged, atol=1e-5)
    assert np.max(np.abs(run(True) - merged)) > 1e-4
    np.testing.assert_array_equal(run(True), run(True))  # The stream decides the mask.
    assert np.max(np.abs(run(True, key=1) - run(True))) > 1e-5


def test_bad_specs_are_named():
    with pytest.raises(ValueError, match="rank=0"):
        lora.LoraSpec(rank=0, alpha=1.0)
    with pytest.raises(ValueError, match="'qkv'"):
        lora.LoraSpec(rank=4, alpha=8.0, targets=("query", "qkv"))
    with pytest.raises(ValueError, match="dropout=1.0"):
        lora.LoraSpec(rank=4, alpha=8.0, dropout=1.0)
    params = {"wte": {"embedding": jnp.zeros((4, 2))}}
    with pytest.raises(ValueError, match="No kernel"):
        lora.targeted(params, lora.LoraSpec(rank=2, alpha=2.0))
