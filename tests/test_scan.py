"""model.scan_layers: the block stacks as one nn.scan. The same function as the unscanned
layout on converted parameters (logits, loss, gradients, decoding), with remat too; exact layout
conversion; sharding of stacked parameters; checkpoints restoring across the two layouts."""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_scale as scale
import test_train_e2e as e2e
from flax import traverse_util
from jax.sharding import PartitionSpec

from ptjax import models
from ptjax.config import base_config
from ptjax.decoding.search import DecodeConfig, sample
from ptjax.interop import export_hf, hf_weights
from ptjax.models import gpt, scan, t5_decoding
from ptjax.train import checkpoint, optim, sharding, trainer
from ptjax.train.state import TrainState

KEY = jax.random.PRNGKey(0)


def _case(family):
    """(config with 2 layers (T5: 2 + 3), module, task, batch, init inputs), no dropout."""
    cfg, module, task, batch, init_inputs = scale._family_case(family)
    depth = dict(num_decoder_layers=3) if family == "t5" else {}
    cfg = dataclasses.replace(cfg, num_layers=2, dropout_rate=0.0, **depth)
    return cfg, module, task, batch, init_inputs


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert flat_a.keys() == flat_b.keys()
    for path, x in flat_a.items():
        np.testing.assert_allclose(flat_b[path], x, rtol=rtol, atol=atol, err_msg=str(path))


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.shape(x) == np.shape(y)
        np.testing.assert_array_equal(x, y)


def _init(module, cfg, init_inputs):
    return scale._fast_jit(module(cfg).init)(KEY, *init_inputs)["params"]


# Scanned without remat, and with two of the policies (each compile costs seconds).
SCAN_REMAT = {"gpt": "none", "bert": "full", "t5": "dots_with_no_batch_dims_saveable"}


@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_scanned_and_rematted_stacks_give_the_unscanned_loss_and_gradients(family):
    cfg, module, task, batch, init_inputs = _case(family)
    params = _init(module, cfg, init_inputs)
    (loss, grads), _, _ = scale._loss_and_grads(module, cfg, task, batch, params)
    stacked = scan.stack_layers(params)
    scanned = dataclasses.replace(cfg, scan_layers=True, remat=SCAN_REMAT[family])
    (loss_s, grads_s), _, mean_loss = scale._loss_and_grads(module, scanned, task, batch, stacked)
    np.testing.assert_allclose(float(loss_s), float(loss), rtol=1e-6)
    _assert_trees_close(scan.unstack_layers(grads_s), grads)
    jaxpr = str(jax.make_jaxpr(mean_loss)(stacked))
    assert "scan" in jaxpr and ("remat" in jaxpr) == (SCAN_REMAT[family] != "none")
    # A scanned model's own init has the stacked layout, [layers, ...] leading.
    own = jax.eval_shape(module(scanned).init, KEY, *init_inputs)["params"]
    assert jax.tree.map(np.shape, own) == jax.tree.map(np.shape, stacked)
    assert scan.layout(own) == scan.SCANNED and scan.layout(params) == scan.UNSCANNED


def test_layout_conversion_is_exact_for_params_optimizer_state_and_shapes():
    cfg, module, _, _, init_inputs = _case("t5")  # Encoder 2 and decoder 3 layers.
    params = _init(module, cfg, init_inputs)
    tx, _ = optim.make_optimizer(base_config().optimizer, 10, params)
    state = jax.jit(TrainState.create, static_argnums=1)(params, tx, jax.random.PRNGKey(1))
    state = jax.device_get(state.replace(opt_state=jax.tree.map(np.ones_like, state.opt_state)))
    stacked = scan.stack_layers(state)
    assert stacked.params["decoder"]["layer"]["mlp"]["wi"]["kernel"].shape == (3, 32, 64)
    mu = stacked.opt_state[1][0].mu  # Adam's moments mirror the parameters.
    assert mu["encoder"]["layer"]["mlp"]["wo"]["kernel"].shape == (2, 64, 32)
    _assert_trees_equal(scan.unstack_layers(stacked), state)
    _assert_trees_equal(scan.stack_layers(stacked), stacked)  # Already scanned: unchanged.
    abstract = jax.eval_shape(lambda: state)
    assert jax.tree.map(np.shape, scan.stack_layers(abstract)) == jax.tree.map(np.shape, stacked)
    assert scan.layout(stacked) == scan.SCANNED and scan.layout(state) == scan.UNSCANNED
    assert scan.layout({"wte": 1}) is None


def _greedy(prefill, step, params, tokens, mask, max_new):
    cfg = DecodeConfig(max_new_tokens=max_new, eos_id=-1)
    run = jax.jit(lambda p, t, m: sample(prefill, step, p, t, m, jax.random.PRNGKey(0), cfg))
    return np.asarray(run(params, tokens, mask)[0])


@pytest.mark.parametrize("family", ["gpt", "t5"])
def test_scanned_model_decodes_the_unscanned_tokens(family):
    """GPT's stacked parameters are unstacked once before the loop (Generator's path), T5's go
    straight into it (unstacked inside each step)."""
    cfg, module, _, _, init_inputs = _case(family)
    params = _init(module, cfg, init_inputs)
    params = jax.tree.map(lambda x: 3.0 * x, params)  # Sharper: no near-ties in greedy picks.
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(2, cfg.vocab_size, (2, 6)), jnp.int32)
    mask = jnp.ones_like(tokens, bool).at[0, :2].set(False)  # Row 0 left-padded.
    fns = gpt.decode_fns if family == "gpt" else t5_decoding.decode_fns
    want = _greedy(*fns(module(cfg), 5), params, tokens, mask, 5)
    scanned = module(dataclasses.replace(cfg, scan_layers=True))
    stacked = scan.stack_layers(params)
    decode_params = gpt.prepare_decode_params(stacked) if family == "gpt" else stacked
    assert scan.layout(decode_params) == (scan.UNSCANNED if family == "gpt" else scan.SCANNED)
    np.testing.assert_array_equal(_greedy(*fns(scanned, 5), decode_params, tokens, mask, 5), want)


def test_scanned_parameters_shard_like_their_layers_on_a_mesh():
    cfg, module, _, _, init_inputs = _case("gpt")
    cfg = dataclasses.replace(cfg, scan_layers=True)
    params = jax.eval_shape(module(cfg).init, KEY, *init_inputs)["params"]
    tx, _ = optim.make_optimizer(base_config().optimizer, 10, params)
    state = jax.eval_shape(lambda: TrainState.create(params, tx, jax.random.PRNGKey(1)))
    mesh = sharding.make_mesh((2, 2, 2))
    shardings = sharding.tree_shardings(state, mesh)
    block = shardings.params["h"]
    assert block["mlp"]["wi"]["kernel"].spec == PartitionSpec(None, "fsdp", "tensor")
    assert block["attn"]["query"]["kernel"].spec == PartitionSpec(None, "fsdp", "tensor", None)
    assert block["attn"]["out"]["kernel"].spec == PartitionSpec(None, "tensor", None, "fsdp")
    assert block["ln_1"]["scale"].spec == PartitionSpec(None, None)
    unscanned = sharding.partition_spec("h_0/mlp/wi/kernel", (32, 64), mesh)
    assert unscanned == PartitionSpec("fsdp", "tensor")
    mu = shardings.opt_state[1][0].mu["h"]["mlp"]["wi"]["kernel"]
    assert mu.spec == block["mlp"]["wi"]["kernel"].spec


class _NoData:
    """A stand-in input-pipeline position for Checkpointer (nothing to save)."""

    def save(self, path):
        os.makedirs(path, exist_ok=True)

    def restore(self, path):
        pass


@pytest.fixture(scope="module")
def gpt_states():
    """(unscanned model config, its state after one Adam update, that state stacked)."""
    cfg, module, _, _, init_inputs = _case("gpt")
    params = _init(module, cfg, init_inputs)
    tx, _ = optim.make_optimizer(base_config().optimizer, 10, params)

    @jax.jit
    def one_update(params):
        state = TrainState.create(params, tx, jax.random.PRNGKey(1))
        grads = jax.tree.map(lambda x: 0.01 * jnp.ones_like(x), params)
        updates, opt_state = tx.update(grads, state.opt_state, params)
        return state.replace(params=jax.tree.map(jnp.add, params, updates), opt_state=opt_state)

    state = jax.device_get(one_update(params))
    return cfg, state, scan.stack_layers(state)


@pytest.mark.parametrize("saved_scanned", [False, True], ids=["from_unscanned", "from_scanned"])
def test_checkpoints_restore_across_layouts(gpt_states, tmp_path, saved_scanned):
    """A resume (params and optimizer state), restore_params and restore_matching_params
    (init_checkpoint) each give the other layout's model the same numbers."""
    _, state, stacked = gpt_states
    saved, want = (stacked, state) if saved_scanned else (state, stacked)
    checkpointer = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), keep=1)
    checkpointer.save(3, saved, _NoData())
    checkpointer.wait()
    abstract = jax.eval_shape(lambda: want)
    assert checkpointer.newest_compatible(abstract) == 3
    _assert_trees_equal(checkpointer.restore_latest(abstract, _NoData())[1], want)
    checkpointer.close()
    _assert_trees_equal(checkpoint.restore_params(str(tmp_path), abstract.params), want.params)
    fresh = jax.tree.map(np.zeros_like, want.params)
    partial = checkpoint.restore_matching_params(str(tmp_path), fresh)
    _assert_trees_equal(partial.params, want.params)
    assert not partial.fresh and not partial.ignored


def test_a_deeper_checkpoint_of_the_other_layout_is_named(gpt_states, tmp_path):
    cfg, state, _ = gpt_states
    checkpointer = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), keep=1)
    checkpointer.save(1, state, _NoData())
    checkpointer.close()
    deeper = gpt.GPT(dataclasses.replace(cfg, num_layers=3, scan_layers=True))
    abstract = jax.eval_shape(deeper.init, KEY, jnp.zeros((1, 4), jnp.int32))
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"h/ln_1/scale: .*\(2, 32\)"):
        checkpoint.restore_params(str(tmp_path), abstract["params"])


# --- A run resumed with the other layout, then exported --------------------------------------


def test_a_run_resumes_scanned_and_exports(tmp_path, data_dir, tokenizer_file):
    """1 unscanned step under pmap, then the second with model.scan_layers=True on a
    (2, 2, 2) mesh from its checkpoint (converted on restore, as tested exactly above); the
    scanned workdir exports to Hugging Face with per-layer tensors."""
    config = e2e.tiny_config(
        data_dir,
        tokenizer_file,
        total_steps=2,
        checkpoint_every_steps=1,
        sample_every_steps=0,
        **{
            "optimizer.warmup_steps": 1,
            "dataset.max_eval_batches": 1,
            "model.d_model": 32,
            "model.num_layers": 2,  # A stack to scan.
        },
    )
    workdir = str(tmp_path / "run")
    trainer.train_and_evaluate(config, workdir, stop_after_steps=1)
    config.model.scan_layers = True
    config.parallelism.mode, config.parallelism.fsdp, config.parallelism.tensor = "mesh", 2, 2
    result = trainer.train_and_evaluate(config, workdir)
    assert result["step"] == 2 and np.isfinite(result["train"]["loss"])
    assert os.path.exists(os.path.join(workdir, "config.step_1.json"))  # Resumed at step 1.
    model, _ = models.build(config, 512)
    shapes = jax.eval_shape(functools.partial(trainer.init_params, config, model), KEY)
    params = checkpoint.restore_params(workdir, shapes)
    assert params["h"]["ln_1"]["scale"].shape == (2, 32)
    export_hf(workdir, str(tmp_path / "hf"))
    tensors = hf_weights.read_state_dict(str(tmp_path / "hf"))
    np.testing.assert_array_equal(
        tensors["transformer.h.1.ln_2.weight"], params["h"]["ln_2"]["scale"][1]
    )
