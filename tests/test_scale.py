"""Scale features: gradient accumulation, mixed precision, rematerialisation, the pre-flight
estimator and MFU accounting, each checked against the plain float32 step on tiny models."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ptjax import config as config_lib
from ptjax import models
from ptjax import run as run_lib
from ptjax.config import base_config
from ptjax.models import bert, gpt, llama, t5
from ptjax.tasks import TASKS
from ptjax.train import accounting, estimate, optim, parallel, sharding, steps, trainer
from ptjax.train.state import TrainState

BATCH, LENGTH, VOCAB = 8, 16, 61
# XLA:CPU with its backend optimisations off: compiles ~5x faster, same arithmetic.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _lm_batch(seed: int = 0) -> dict:
    """A causal-LM batch with two packed documents per row and uneven padding."""
    rng = np.random.default_rng(seed)
    weights = np.ones((BATCH, LENGTH), np.float32)
    for row in range(BATCH):
        weights[row, LENGTH - row :] = 0.0  # Row r has r padding tokens.
    segment_ids = np.ones((BATCH, LENGTH), np.int32)
    segment_ids[:, LENGTH // 2 :] = 2
    positions = np.concatenate([np.arange(LENGTH // 2)] * 2)[None].repeat(BATCH, 0)
    return dict(
        inputs=rng.integers(0, VOCAB, (BATCH, LENGTH)).astype(np.int32),
        targets=rng.integers(0, VOCAB, (BATCH, LENGTH)).astype(np.int32),
        segment_ids=segment_ids,
        positions=positions.astype(np.int32),
        weights=weights,
    )


def _gpt(**changes) -> gpt.GPT:
    cfg = dict(vocab_size=VOCAB, max_len=LENGTH, num_layers=2, num_heads=2, d_model=16, d_ff=32)
    cfg.update(dropout_rate=0.0, **changes)
    return gpt.GPT(gpt.GPTConfig(**cfg))


def _llama(**changes) -> llama.Llama:
    cfg = dict(vocab_size=VOCAB, max_len=LENGTH, num_layers=2, num_heads=4, num_kv_heads=2)
    cfg.update(d_model=16, d_ff=32, tie_embeddings=False, **changes)
    return llama.Llama(llama.LlamaConfig(**cfg))


def _train(model, batch, *, num_devices=2, num_microbatches=1, num_steps=1):
    """(losses, params) after `num_steps` pmap train steps on `batch` from a fixed init."""
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, LENGTH), jnp.int32))["params"]
    opt = base_config().optimizer
    opt.warmup_steps = 0
    opt.learning_rate = 1e-2
    tx, schedule = optim.make_optimizer(opt, 10, params)
    devices = jax.local_devices()[:num_devices]
    state = parallel.replicate(TrainState.create(params, tx, jax.random.PRNGKey(1)), devices)
    p_step = parallel.pmap_train_step(
        steps.train_step,
        devices=devices,
        model=model,
        task=TASKS["causal_lm"](),
        tx=tx,
        schedule=schedule,
        num_microbatches=num_microbatches,
    )
    sharded = jax.tree.map(lambda x: x.reshape(num_devices, -1, *x.shape[1:]), batch)
    p_step = p_step.lower(state, sharded).compile(FAST_COMPILE)
    losses = []
    for _ in range(num_steps):
        state, metrics = p_step(state, sharded)
        losses.append(float(parallel.unreplicate(metrics)["loss"]))
    return losses, parallel.unreplicate(state.params)


def _assert_same_params(a, b, rtol=1e-4, atol=3e-6):
    flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert flat_a.keys() == flat_b.keys()
    for path, x in flat_a.items():
        if path[-2:] == ("key", "bias"):
            # Exactly zero gradient (softmax ignores a per-query shift): Adam turns round-off
            # into steps of ~lr either way; it must only stay small.
            assert np.abs(flat_b[path]).max() < 0.05 and np.abs(x).max() < 0.05
            continue
        np.testing.assert_allclose(flat_b[path], x, rtol=rtol, atol=atol, err_msg=str(path))


# --- Gradient accumulation -----------------------------------------------------------------


def test_microbatches_give_the_big_batch_update():
    """4 slices of 1 row per device == the whole 4-row per-device batch: loss and parameters."""
    model, batch = _gpt(), _lm_batch()
    losses_1, params_1 = _train(model, batch, num_microbatches=1, num_steps=2)
    losses_4, params_4 = _train(model, batch, num_microbatches=4, num_steps=2)
    np.testing.assert_allclose(losses_4, losses_1, rtol=1e-5)
    _assert_same_params(params_1, params_4)


def test_num_microbatches_must_divide_the_batch():
    config = base_config()
    config.per_device_batch_size = 6
    config.num_microbatches = 4
    with pytest.raises(config_lib.ConfigError, match="num_microbatches=4 must divide"):
        run_lib.validate(config)
    config.num_microbatches = 3
    run_lib.validate(config)


def test_scale_config_keys_are_checked():
    from ptjax.models import layers

    assert config_lib._CHOICES["model.remat"] == tuple(layers.REMAT_POLICIES)
    config = base_config()
    config.parallelism.data = 0
    with pytest.raises(config_lib.ConfigError, match="parallelism.data"):
        run_lib.validate(config)
    config = base_config()
    config.parallelism.mode = "mesh"
    run_lib.validate(config)
    config.task, config.model.family = "extractive_qa", "bert"
    run_lib.validate(config)  # Tasks with their own eval run on a mesh too.


# --- Mixed precision and rematerialisation, all three families ------------------------------


def _family_case(family: str):
    """(model config, module class, task, batch, init inputs) of a tiny model of `family`."""
    rng = np.random.default_rng(0)
    batch_size, length = 4, LENGTH

    def tokens():
        return rng.integers(1, VOCAB, (batch_size, length)).astype(np.int32)

    ones = np.ones((batch_size, length), np.float32)
    positions = np.broadcast_to(np.arange(length), (batch_size, length)).astype(np.int32)
    zeros = np.zeros((1, length), np.int32)
    small = dict(vocab_size=VOCAB, num_layers=1, num_heads=2, d_ff=64, dropout_rate=0.1)
    if family in ("gpt", "llama"):
        if family == "gpt":
            cfg = gpt.GPTConfig(max_len=length, d_model=32, **small)
        else:
            cfg = llama.LlamaConfig(max_len=length, d_model=32, num_kv_heads=1, **small)
        batch = dict(
            inputs=tokens(),
            targets=tokens(),
            positions=positions,
            segment_ids=np.ones_like(positions),
            weights=ones,
        )
        module = gpt.GPT if family == "gpt" else llama.Llama
        return cfg, module, TASKS["causal_lm"](), batch, (zeros,)
    if family == "bert":
        cfg = bert.BertConfig(max_len=length, d_model=32, **small)
        batch = dict(
            input_ids=tokens(),
            token_type_ids=np.zeros_like(positions),
            attention_mask=np.ones_like(positions),
            targets=tokens(),
            weights=(rng.random((batch_size, length)) < 0.3).astype(np.float32),
        )
        return cfg, bert.BertForPretraining, TASKS["masked_lm"](), batch, (zeros,)
    cfg = t5.T5Config(d_model=32, d_kv=16, num_decoder_layers=1, **small)
    segments = np.ones_like(positions)
    batch = dict(
        encoder_input_tokens=tokens(),
        decoder_input_tokens=tokens(),
        decoder_target_tokens=tokens(),
        encoder_segment_ids=segments,
        decoder_segment_ids=segments,
        encoder_positions=positions,
        decoder_positions=positions,
        decoder_loss_weights=ones,
    )
    return cfg, t5.T5, TASKS["span_corruption"](), batch, (zeros, zeros)


def _loss_and_grads(module, cfg, task, batch, params, train=True):
    model = module(cfg)

    def mean_loss(p):
        loss_sum, sums = task.loss(model, p, batch, rng=jax.random.PRNGKey(3), train=train)
        return loss_sum / sums["weight"]

    return _fast_jit(jax.value_and_grad(mean_loss))(params), model, mean_loss


def _fast_jit(fn):
    return jax.jit(fn, compiler_options=FAST_COMPILE)


def _cosine(a, b):
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(a)])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(b)])
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# Each family checks a different remat policy, so that every policy runs once.
REMAT_CASES = {
    "gpt": "dots_saveable",
    "bert": "full",
    "t5": "dots_with_no_batch_dims_saveable",
    "llama": "full",
}


@pytest.mark.parametrize("family", ["gpt", "bert", "t5", "llama"])
def test_bf16_compute_and_remat_against_float32(family):
    """bf16 compute: matmuls in bf16, params/grads/loss float32, loss within 1% (relative) of
    float32 and gradients with cosine > 0.99. Remat: the same loss and gradients as none."""
    cfg, module, task, batch, init_inputs = _family_case(family)
    params = _fast_jit(module(cfg).init)(jax.random.PRNGKey(0), *init_inputs)["params"]
    # Larger weights than at init, so that logits (and bf16's rounding of them) matter; T5's
    # unscaled RMS norms already give it logits of a few units.
    params = jax.tree.map(lambda x: (1.0 if family == "t5" else 3.0) * x, params)
    (loss, grads), _, _ = _loss_and_grads(module, cfg, task, batch, params)

    bf16 = dataclasses.replace(cfg, dtype="bfloat16")
    (loss_bf16, grads_bf16), _, mean_loss = _loss_and_grads(module, bf16, task, batch, params)
    assert loss_bf16.dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(grads_bf16)} == {jnp.dtype(jnp.float32)}
    np.testing.assert_allclose(float(loss_bf16), float(loss), rtol=1e-2)
    assert _cosine(grads_bf16, grads) > 0.99
    # Every matmul of the forward and backward pass takes bf16 operands (the loss's output
    # projection accumulates into float32 where the model asks for it).
    jaxpr = jax.make_jaxpr(jax.grad(mean_loss))(params)
    dots = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
    assert dots and all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars)

    rematted = dataclasses.replace(cfg, remat=REMAT_CASES[family])
    (loss_remat, grads_remat), _, mean_loss = _loss_and_grads(module, rematted, task, batch, params)
    assert "remat" in str(jax.make_jaxpr(jax.grad(mean_loss))(params))
    np.testing.assert_allclose(float(loss_remat), float(loss), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_remat), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _equations(jaxpr):
    """Every equation of a jaxpr, those of nested jaxprs (remat, custom_vjp, scan) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", None)
            if inner is not None:
                yield from _equations(getattr(inner, "jaxpr", inner))


# --- Pre-flight estimator ------------------------------------------------------------------


def _estimator_config(**changes):
    config = base_config()  # gpt/tiny, causal_lm.
    config.model.vocab_size = 64
    config.seq_len = 16
    config.per_device_batch_size = 4
    for key, value in changes.items():
        setattr(config, key, value)
    run_lib.validate(config)
    return config


def test_estimator_matches_the_compiled_train_step():
    """The estimator's figures (abstract arguments, nothing allocated) equal XLA's memory
    analysis of the trainer's own step compiled on real arrays; microbatches need less."""
    config = _estimator_config()
    result = estimate.estimate(config, compiler_options=FAST_COMPILE)

    model, _ = models.build(config)
    params = _fast_jit(lambda key: trainer.init_params(config, model, key))(jax.random.PRNGKey(0))
    tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps, params)
    state = _fast_jit(lambda p: TrainState.create(p, tx, jax.random.PRNGKey(1)))(params)
    devices = jax.local_devices()[:1]
    state = parallel.replicate(state, devices)
    shape = (1, config.per_device_batch_size, config.seq_len)  # [devices, batch, length]
    batch = {k: np.zeros(shape, np.int32) for k in ("inputs", "targets", "positions")}
    batch.update(segment_ids=np.ones(shape, np.int32), weights=np.ones(shape, np.float32))
    p_step = parallel.pmap_train_step(
        steps.train_step,
        devices=devices,
        model=model,
        task=TASKS["causal_lm"](),
        tx=tx,
        schedule=schedule,
    )
    memory = p_step.lower(state, batch).compile(FAST_COMPILE).memory_analysis()
    assert result.argument_bytes == memory.argument_size_in_bytes
    assert result.output_bytes == memory.output_size_in_bytes
    assert result.temp_bytes == memory.temp_size_in_bytes
    assert result.alias_bytes == memory.alias_size_in_bytes
    n_params = sum(x.size for x in jax.tree.leaves(params))
    assert result.num_params == n_params
    # Params + Adam's two moments in float32, donated: counted once.
    assert result.peak_bytes > 3 * 4 * n_params
    assert 0.5 < result.flops_per_step / result.model_flops_per_step < 2.0

    micro = estimate.estimate(_estimator_config(num_microbatches=4), compiler_options=FAST_COMPILE)
    assert micro.temp_bytes < result.temp_bytes
    assert micro.argument_bytes == result.argument_bytes

    # FSDP over 8 devices: the state per device is an eighth (plus the replicated small
    # arrays), and with the activations kept split by rows the whole step needs less.
    fsdp = _estimator_config()
    fsdp.parallelism.mode, fsdp.parallelism.fsdp = "mesh", 8
    sharded = estimate.estimate(fsdp, compiler_options=FAST_COMPILE)
    assert sharded.argument_bytes < result.argument_bytes / 4
    assert sharded.peak_bytes < result.peak_bytes


def test_a_lora_estimate_counts_the_frozen_model_and_trains_the_adapters_only():
    """A LoRA run's state: the whole model frozen, moments for the adapters alone."""
    full = estimate.estimate(_estimator_config(), compiler_options=FAST_COMPILE)
    config = _estimator_config(init_checkpoint="/a/base/run")
    config.finetune.lora.rank, config.finetune.lora.targets = 2, "query,value,wo"
    adapted = estimate.estimate(config, compiler_options=FAST_COMPILE)
    # tiny GPT (2 layers, 128 wide, MLP 512): query, value 2 x (128 + 128), wo 2 x (512 + 128).
    assert adapted.trained_params == 2 * (2 * 2 * 256 + 2 * 640) == 4608
    assert adapted.num_params == full.num_params + adapted.trained_params
    # Params once, not three times (params + two moments) as in the full fine-tune.
    assert adapted.argument_bytes < 0.5 * full.argument_bytes


def test_largest_batch_bisects_to_the_last_fit(monkeypatch):
    """Doubling then bisection over multiples of num_microbatches, on a made-up cost model."""

    def fake(config, rows, compiler_options=None):
        return estimate.Estimate(rows, 10, 1000, 0, 100 * rows, 0, 0, 1.0, 1.0, rows)

    monkeypatch.setattr(estimate, "estimate", fake)
    config = _estimator_config(num_microbatches=2)
    best, seen = estimate.largest_batch(config, memory_bytes=1000 + 100 * 23)
    assert best == 22 and all(b % 2 == 0 for b in seen) and len(seen) <= 8
    assert estimate.largest_batch(config, memory_bytes=1000)[0] == 0
    assert estimate.largest_batch(config, memory_bytes=1e12, max_batch=64)[0] == 64


# --- MFU accounting and profiling ----------------------------------------------------------


def test_peak_table_and_mfu_inputs():
    assert accounting.table_peak_flops("TPU v4") == 275e12
    assert accounting.table_peak_flops("TPU v5 lite") == 197e12
    assert accounting.table_peak_flops("TPU v5p") == 459e12
    assert accounting.table_peak_flops("TPU v6 lite") == 918e12
    assert accounting.table_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert accounting.table_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert accounting.table_peak_flops("NVIDIA H200") == 989e12
    assert accounting.table_peak_flops("cpu") is None
    # On the CPU: a measured matmul rate for the host, shared by its 8 fake devices.
    assert 1e8 < accounting.peak_flops() < 1e13
    assert accounting.peak_flops(override_per_device=1e12) == 1e12 * jax.device_count()
    config = _estimator_config()
    model_config = models.MODELS["gpt"].make_config(config)
    tokens = config.per_device_batch_size * jax.device_count() * config.seq_len
    assert accounting.model_flops_per_step(config, model_config) == pytest.approx(
        gpt.flops_per_token(model_config, config.seq_len) * tokens
    )


def test_profiler_traces_the_chosen_steps(tmp_path):
    profiler = accounting.Profiler(str(tmp_path / "profile"), first_step=1, num_steps=2)
    x = jnp.ones((64, 64))
    for step in range(4):
        profiler.before_step(step)
        assert profiler.active == (step in (1, 2))
        x = _fast_jit(lambda a: a @ a / 64)(x)
        profiler.after_step(step + 1, x)
    traces = list((tmp_path / "profile").glob("plugins/profile/*/*.xplane.pb"))
    assert len(traces) == 1


# --- Mesh mode: jit with NamedSharding on a (data, fsdp, tensor) mesh -----------------------


@functools.cache
def _one_device_reference():
    return _train(_gpt(), _lm_batch(), num_devices=1, num_steps=2)


def _train_on_mesh(shape, num_microbatches, model=None):
    model, batch = model or _gpt(), _lm_batch()
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, LENGTH), jnp.int32))["params"]
    opt = base_config().optimizer
    opt.warmup_steps = 0
    opt.learning_rate = 1e-2
    tx, schedule = optim.make_optimizer(opt, 10, params)
    state = TrainState.create(params, tx, jax.random.PRNGKey(1))
    mesh = sharding.make_mesh(shape)
    step = parallel.mesh_train_step(
        steps.train_step,
        mesh,
        jax.eval_shape(lambda: state),
        model=model,
        task=TASKS["causal_lm"](),
        tx=tx,
        schedule=schedule,
        num_microbatches=num_microbatches,
    )
    state = parallel.place_on_mesh(state, mesh)
    batch = jax.device_put(batch, sharding.batch_sharding(mesh))  # [global_batch, length]
    step = step.lower(state, batch).compile(FAST_COMPILE)
    losses = []
    for _ in range(2):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"][0]))
    return losses, state


@pytest.mark.parametrize(
    "shape,num_microbatches", [((8, 1, 1), 1), ((2, 4, 1), 2), ((2, 2, 2), 1), ((1, 1, 8), 1)]
)
def test_mesh_shapes_give_the_one_device_loss(shape, num_microbatches):
    losses_1, params_1 = _one_device_reference()
    losses, state = _train_on_mesh(shape, num_microbatches)
    np.testing.assert_allclose(losses, losses_1, rtol=1e-5)
    _assert_same_params(params_1, jax.device_get(state.params))
    # Placement by sharding.py's rules; the Adam moments follow their parameters.
    data, fsdp, tensor = shape
    wi = state.params["h_0"]["mlp"]["wi"]["kernel"]  # [d_model 16, d_ff 32]
    query = state.params["h_0"]["attn"]["query"]["kernel"]  # [16, heads 2, head_dim 8]
    wte = state.params["wte"]["embedding"]  # [vocab 61, 16]: 61 divides nothing
    assert wi.sharding.shard_shape(wi.shape) == (16 // fsdp, 32 // tensor)
    heads = 1 if tensor == 2 else 2  # 2 heads split over tensor=2, not over 8 (replicated).
    assert query.sharding.shard_shape(query.shape) == (16 // fsdp, heads, 8)
    assert wte.sharding.shard_shape(wte.shape) == (61, 16 // fsdp)
    moments = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state)
        if "h_0/mlp/wi/kernel" in sharding._path_string(path)
    ]
    assert moments and all(m.sharding == wi.sharding for m in moments)


def test_llama_on_a_mesh_gives_the_one_device_loss():
    """Grouped-query attention under the mesh rules: 4 query heads split over tensor=2, their 2
    key/value heads too; an untied head's [d_model, vocab] kernel by the lm_head rule."""
    losses_1, params_1 = _train(_llama(), _lm_batch(), num_devices=1, num_steps=2)
    losses, state = _train_on_mesh((2, 2, 2), 1, model=_llama())
    np.testing.assert_allclose(losses, losses_1, rtol=1e-5)
    # Adam divides by the gradients' size, so entries whose gradients are near zero move by
    # float32 round-off amplified: up to 1.5e-5 (0.15% of a 1e-2 step) on 2 of 2,048 entries.
    _assert_same_params(params_1, jax.device_get(state.params), atol=3e-5)
    key = state.params["h_0"]["attn"]["key"]["kernel"]  # [16, kv heads 2, head_dim 4]
    head = state.params["lm_head"]["kernel"]  # [16, vocab 61]
    assert key.sharding.shard_shape(key.shape) == (8, 1, 4)
    assert head.sharding.shard_shape(head.shape) == (8, 61)


def test_model_flops_count_the_vocabulary_output_where_the_task_has_one():
    """train/mfu's FLOPs: a BERT classifier or span head has no vocabulary output, MLM projects
    its masked share of positions, a causal LM every position."""
    from ptjax.config_presets import bert_classification_config, bert_config, bert_qa_config

    def per_token(config, **head):
        config.model.vocab_size, config.seq_len = 8000, 128
        _, model_config = models.build(config, **head)
        return accounting.model_flops_per_token(config, model_config)

    config = bert_config("tiny")
    config.model.vocab_size = 8000
    _, cfg = models.build(config)
    every = bert.flops_per_token(cfg, 128, 1.0)
    mlm = per_token(bert_config("tiny"))
    classify = per_token(bert_classification_config("tiny"), num_labels=2)
    assert classify == per_token(bert_qa_config("tiny")) == bert.flops_per_token(cfg, 128, 0.0)
    assert mlm == pytest.approx(bert.flops_per_token(cfg, 128, 0.15))
    assert classify < mlm < every / 2  # The 8000 x 128 table outweighs a tiny BERT's blocks.
    config = _estimator_config()
    _, gpt_cfg = models.build(config)
    assert accounting.model_flops_per_token(config, gpt_cfg) == gpt.flops_per_token(gpt_cfg, 16)
