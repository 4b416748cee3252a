"""1 device and 8 devices give the same loss and update for the same global batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ptjax.config import base_config
from ptjax.models import gpt
from ptjax.tasks import TASKS
from ptjax.train import optim, parallel, steps
from ptjax.train.state import TrainState

GLOBAL_BATCH, LENGTH, VOCAB = 8, 16, 61


def _batch(rng: np.random.Generator) -> dict:
    """A global batch with packed segments and uneven padding across rows."""
    inputs = rng.integers(0, VOCAB, (GLOBAL_BATCH, LENGTH)).astype(np.int32)
    targets = rng.integers(0, VOCAB, (GLOBAL_BATCH, LENGTH)).astype(np.int32)
    segment_ids = np.ones((GLOBAL_BATCH, LENGTH), np.int32)
    segment_ids[:, LENGTH // 2 :] = 2
    positions = np.concatenate([np.arange(LENGTH // 2)] * 2)[None].repeat(GLOBAL_BATCH, 0)
    weights = np.ones((GLOBAL_BATCH, LENGTH), np.float32)
    for row in range(GLOBAL_BATCH):
        weights[row, LENGTH - row :] = 0.0  # Row r has r padding tokens: unequal per device.
    return dict(
        inputs=inputs,
        targets=targets,
        segment_ids=segment_ids,
        positions=positions.astype(np.int32),
        weights=weights,
    )


def _run(num_devices: int, batches: list[dict]):
    cfg = gpt.GPTConfig(
        vocab_size=VOCAB,
        max_len=LENGTH,
        num_layers=2,
        num_heads=2,
        d_model=16,
        d_ff=32,
        dropout_rate=0.0,
    )
    model = gpt.GPT(cfg)
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
    )
    losses = []
    for batch in batches:
        sharded = jax.tree.map(
            lambda x: x.reshape(num_devices, GLOBAL_BATCH // num_devices, *x.shape[1:]), batch
        )
        state, metrics = p_step(state, sharded)
        losses.append(float(parallel.unreplicate(metrics)["loss"]))
    return losses, parallel.unreplicate(state.params)


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
@pytest.mark.parametrize("num_devices", [2, 8])
def test_same_loss_and_update_as_one_device(num_devices):
    assert jax.local_device_count() >= 8, "conftest should give 8 fake CPU devices"
    rng = np.random.default_rng(0)
    batches = [_batch(rng) for _ in range(3)]
    losses_1, params_1 = _run(1, batches)
    losses_n, params_n = _run(num_devices, batches)
    np.testing.assert_allclose(losses_n, losses_1, rtol=1e-5)
    flat_1 = traverse_util.flatten_dict(params_1)
    flat_n = traverse_util.flatten_dict(params_n)
    for path, a in flat_1.items():
        if path[-2:] == ("key", "bias"):
            # The key bias has an exactly zero gradient (softmax ignores a per-query shift), so
            # Adam turns float round-off into steps of ~1e-6 either way: check it stays ~0.
            assert np.abs(flat_n[path]).max() < 1e-4 and np.abs(a).max() < 1e-4
            continue
        np.testing.assert_allclose(flat_n[path], a, rtol=1e-4, atol=3e-6, err_msg=str(path))


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_loss_is_the_global_token_mean():
    """Not a mean of per-device means: devices with more padding count for less."""
    rng = np.random.default_rng(1)
    batch = _batch(rng)
    losses, _ = _run(8, [batch])
    cfg = gpt.GPTConfig(
        vocab_size=VOCAB,
        max_len=LENGTH,
        num_layers=2,
        num_heads=2,
        d_model=16,
        d_ff=32,
        dropout_rate=0.0,
    )
    model = gpt.GPT(cfg)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, LENGTH), jnp.int32))["params"]
    loss_sum, sums = TASKS["causal_lm"]().loss(model, params, batch, rng=None, train=False)
    np.testing.assert_allclose(losses[0], float(loss_sum / sums["weight"]), rtol=1e-5)
