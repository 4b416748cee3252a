"""The encoder tasks' losses and metrics: MLM over masked positions only (gathered or not),
classification's confusion sums, QA's span loss; and 1 vs 8 devices for a BERT MLM step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from ptjax.config import base_config
from ptjax.models import bert
from ptjax.tasks.classification import Classification
from ptjax.tasks.extractive_qa import ExtractiveQA
from ptjax.tasks.masked_lm import MaskedLM, max_predictions
from ptjax.train import optim, parallel, steps
from ptjax.train.state import TrainState

VOCAB, LENGTH, ROWS = 50, 20, 8
CFG = bert.BertConfig(
    vocab_size=VOCAB, max_len=LENGTH, num_layers=2, num_heads=2, d_model=16, d_ff=32,
    dropout_rate=0.0,
)  # fmt: skip


def _mlm_batch(rng, selected_per_row=3):
    targets = rng.integers(7, VOCAB, (ROWS, LENGTH)).astype(np.int32)
    weights = np.zeros((ROWS, LENGTH), np.float32)
    for r in range(ROWS):
        weights[r, 1 + rng.choice(LENGTH - 5, selected_per_row, replace=False)] = 1.0
    attention = np.ones((ROWS, LENGTH), np.int32)
    attention[:, LENGTH - 3 :] = 0  # Padding at the end of every row.
    weights *= attention
    return dict(
        input_ids=np.where(weights > 0, 6, targets).astype(np.int32) * attention,
        targets=targets,
        weights=weights,
        token_type_ids=np.zeros((ROWS, LENGTH), np.int32),
        attention_mask=attention,
    )


def _mlm_model():
    model = bert.BertForPretraining(CFG)
    zeros = jnp.zeros((1, LENGTH), jnp.int32)
    return model, model.init(jax.random.PRNGKey(0), zeros, zeros, zeros)["params"]


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_mlm_loss_counts_masked_positions_only_and_gathering_changes_nothing():
    model, params = _mlm_model()
    batch = _mlm_batch(np.random.default_rng(0))
    full, gathered = MaskedLM(), MaskedLM()
    gathered.num_predictions = 4  # At least the 3 selected per row.
    loss_full, sums_full = full.loss(model, params, batch, rng=None, train=False)
    loss_gathered, sums_gathered = gathered.loss(model, params, batch, rng=None, train=False)
    np.testing.assert_allclose(loss_gathered, loss_full, rtol=1e-6)
    assert float(sums_full["weight"]) == float(sums_gathered["weight"]) == ROWS * 3
    assert float(sums_gathered["unpredicted"]) == 0.0

    # By hand: cross-entropy of the full logits at the selected positions.
    logits = model.apply({"params": params}, batch["input_ids"], batch["token_type_ids"],
                         batch["attention_mask"])  # fmt: skip
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    np.testing.assert_allclose(loss_full, np.sum(ce * batch["weights"]), rtol=1e-5)

    # Targets where nothing is selected do not matter.
    changed = dict(batch, targets=np.where(batch["weights"] > 0, batch["targets"], 7))
    np.testing.assert_allclose(
        gathered.loss(model, params, changed, rng=None, train=False)[0], loss_gathered, rtol=1e-6
    )
    # More selections than the bound are counted, not silently dropped.
    gathered.num_predictions = 2
    _, sums = gathered.loss(model, params, batch, rng=None, train=False)
    assert float(sums["unpredicted"]) == ROWS * 1
    assert "unpredicted" in gathered.summarize(jax.device_get(sums))


def test_max_predictions_bounds_the_pipeline_selection():
    config = base_config()
    config.seq_len = 128
    assert max_predictions(config) == 20  # ceil(0.15 * 128); round(0.15 * 126) = 19 selected.
    config.mlm.whole_word = True
    assert max_predictions(config) == 36


def test_classification_sums_and_summary():
    model = bert.BertForClassification(CFG, num_labels=3)
    zeros = jnp.zeros((1, LENGTH), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), zeros, zeros, zeros)["params"]
    rng = np.random.default_rng(1)
    batch = dict(
        input_ids=rng.integers(7, VOCAB, (ROWS, LENGTH)).astype(np.int32),
        token_type_ids=np.zeros((ROWS, LENGTH), np.int32),
        attention_mask=np.ones((ROWS, LENGTH), np.int32),
        labels=rng.integers(0, 3, ROWS).astype(np.int32),
        weights=np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32),  # Two padding rows.
    )
    task = Classification()
    task.label_names = ["a", "b", "c"]
    _, sums = task.loss(model, params, batch, rng=None, train=False)
    cm = np.asarray(sums["confusion"])
    assert cm.shape == (3, 3) and cm.sum() == 6.0 and float(sums["weight"]) == 6.0
    logits = model.apply({"params": params}, batch["input_ids"], batch["token_type_ids"],
                         batch["attention_mask"])  # fmt: skip
    predicted = np.argmax(np.asarray(logits), -1)
    expected = np.zeros((3, 3))
    for label, p in zip(batch["labels"][:6], predicted[:6], strict=True):
        expected[label, p] += 1
    np.testing.assert_array_equal(cm, expected)
    summary = task.summarize(jax.device_get(sums))
    assert summary["accuracy"] == pytest.approx(np.trace(expected) / 6)
    assert {"f1/a", "f1/b", "f1/c", "macro_f1", "examples"} <= set(summary)
    assert set(summary) <= set(task.metric_names())


def test_qa_loss_is_the_mean_of_start_and_end_cross_entropy():
    model = bert.BertForQuestionAnswering(CFG)
    zeros = jnp.zeros((1, LENGTH), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), zeros, zeros, zeros)["params"]
    rng = np.random.default_rng(2)
    batch = dict(
        input_ids=rng.integers(7, VOCAB, (ROWS, LENGTH)).astype(np.int32),
        token_type_ids=np.zeros((ROWS, LENGTH), np.int32),
        attention_mask=np.ones((ROWS, LENGTH), np.int32),
        start_positions=rng.integers(0, LENGTH, ROWS).astype(np.int32),
        end_positions=rng.integers(0, LENGTH, ROWS).astype(np.int32),
        weights=np.ones(ROWS, np.float32),
    )
    loss, sums = ExtractiveQA().loss(model, params, batch, rng=None, train=False)
    start, end = model.apply({"params": params}, batch["input_ids"], batch["token_type_ids"],
                             batch["attention_mask"])  # fmt: skip
    ce = optax.softmax_cross_entropy_with_integer_labels
    expected = 0.5 * (ce(start, batch["start_positions"]) + ce(end, batch["end_positions"]))
    np.testing.assert_allclose(loss, np.sum(expected), rtol=1e-5)
    assert float(sums["weight"]) == ROWS


def _run_mlm(num_devices, batches):
    model, params = _mlm_model()
    opt = base_config().optimizer
    opt.warmup_steps = 0
    opt.learning_rate = 1e-2
    tx, schedule = optim.make_optimizer(opt, 10, params)
    devices = jax.local_devices()[:num_devices]
    state = parallel.replicate(TrainState.create(params, tx, jax.random.PRNGKey(1)), devices)
    task = MaskedLM()
    task.num_predictions = 4
    p_step = parallel.pmap_train_step(
        steps.train_step, devices=devices, model=model, task=task, tx=tx, schedule=schedule
    )
    losses = []
    for batch in batches:
        sharded = jax.tree.map(
            lambda x: x.reshape(num_devices, ROWS // num_devices, *x.shape[1:]), batch
        )
        state, metrics = p_step(state, sharded)
        losses.append(float(parallel.unreplicate(metrics)["loss"]))
    return losses, parallel.unreplicate(state.params)


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_bert_mlm_step_one_vs_eight_devices():
    rng = np.random.default_rng(3)
    batches = []
    for i in range(3):
        batch = _mlm_batch(rng, selected_per_row=1 + i)
        batch["weights"][::2] *= 0.0  # Uneven masked counts across devices.
        batches.append(batch)
    losses_1, params_1 = _run_mlm(1, batches)
    losses_8, params_8 = _run_mlm(8, batches)
    np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
    flat_1, flat_8 = traverse_util.flatten_dict(params_1), traverse_util.flatten_dict(params_8)
    for path, a in flat_1.items():
        if path[-2:] == ("key", "bias") or path[0] == "bert" and path[1] == "pooler":
            continue  # Zero gradients (softmax shift; the pooler is unused by MLM): Adam noise.
        # Adam divides by sqrt(v): round-off in tiny gradients moves a weight by ~1e-6.
        np.testing.assert_allclose(flat_8[path], a, rtol=1e-4, atol=1e-5, err_msg=str(path))
