"""GPT, BERT and T5 with the TPU attention kernels (interpreted on the CPU) against XLA: the same
loss and parameter gradients on packed and padded batches in training mode (hidden dropout on,
attention dropout 0), on one device and sharded over a (data, tensor) mesh."""

from __future__ import annotations

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from ptjax.models import attention, bert, gpt, llama, t5
from ptjax.train import parallel

SPLASH = attention.Choice(attention.SPLASH, interpret=True)
LENGTH = 160  # Not a multiple of the kernels' 128 block.


def packed(batch: int, length: int, seed: int = 0) -> np.ndarray:
    """[batch, length] segment ids 1..3, padding 0 at each row's end."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(batch):
        cuts = np.sort(rng.choice(np.arange(8, length - 24), 2, replace=False))
        row = np.zeros(length, np.int32)
        row[: cuts[0]], row[cuts[0] : cuts[1]], row[cuts[1] : length - 12] = 1, 2, 3
        rows.append(row)
    return np.stack(rows)


def positions_of(segments: np.ndarray) -> np.ndarray:
    out = np.zeros_like(segments)
    for b, row in enumerate(segments):
        for s in np.unique(row):
            at = row == s
            out[b, at] = np.arange(at.sum())
    return out


def gpt_case():
    cfg = gpt.GPTConfig(
        vocab_size=97, max_len=256, num_layers=2, num_heads=2, d_model=128, d_ff=256,
        dropout_rate=0.1, attention_dropout_rate=0.0,
    )  # fmt: skip
    model, seg = gpt.GPT(cfg), packed(8, LENGTH)
    tokens = jax.random.randint(jax.random.key(1), seg.shape, 0, cfg.vocab_size)
    batch = {"tokens": tokens, "segments": seg, "positions": positions_of(seg)}

    def apply(params, batch, rng):
        logits = model.apply(
            {"params": params},
            batch["tokens"],
            batch["positions"],
            batch["segments"],
            deterministic=False,
            rngs={"dropout": rng},
        )
        return logits, batch["segments"] > 0

    params = model.init(jax.random.key(0), tokens[:1, :8])["params"]
    return params, batch, apply, contextlib.nullcontext


def llama_case():
    """Grouped-query attention (4 query heads on 2 key/value heads), rotary positions."""
    cfg = llama.LlamaConfig(
        vocab_size=97, max_len=256, num_layers=2, num_heads=4, num_kv_heads=2, d_model=128,
        d_ff=256, dropout_rate=0.1, attention_dropout_rate=0.0,
    )  # fmt: skip
    model, seg = llama.Llama(cfg), packed(8, LENGTH, seed=1)
    tokens = jax.random.randint(jax.random.key(2), seg.shape, 0, cfg.vocab_size)
    batch = {"tokens": tokens, "segments": seg, "positions": positions_of(seg)}

    def apply(params, batch, rng):
        logits = model.apply(
            {"params": params},
            batch["tokens"],
            batch["positions"],
            batch["segments"],
            deterministic=False,
            rngs={"dropout": rng},
        )
        return logits, batch["segments"] > 0

    params = model.init(jax.random.key(0), tokens[:1, :8])["params"]
    return params, batch, apply, contextlib.nullcontext


def bert_case():
    cfg = bert.BertConfig(
        vocab_size=97, max_len=256, num_layers=2, num_heads=2, d_model=128, d_ff=256,
        dropout_rate=0.1, attention_dropout_rate=0.0,
    )  # fmt: skip
    model = bert.Bert(cfg)
    lengths = np.array([LENGTH, 100, 37, 150, 160, 5, 90, 128])
    valid = np.arange(LENGTH)[None, :] < lengths[:, None]
    tokens = jax.random.randint(jax.random.key(1), valid.shape, 0, cfg.vocab_size)
    batch = {"tokens": tokens, "valid": valid}

    def apply(params, batch, rng):
        out = model.apply(
            {"params": params},
            batch["tokens"],
            attention_mask=batch["valid"],
            deterministic=False,
            rngs={"dropout": rng},
        )
        return out.hidden_states, batch["valid"]

    params = model.init(jax.random.key(0), tokens[:1, :8])["params"]
    return params, batch, apply, contextlib.nullcontext


def t5_case():
    # One block each (interpreted kernels are slow): the three attentions are what differ.
    cfg = t5.T5Config(
        vocab_size=97, d_model=128, d_kv=64, d_ff=256, num_layers=1, num_decoder_layers=1,
        num_heads=2, dropout_rate=0.1, attention_dropout_rate=0.0,
    )  # fmt: skip
    model = t5.T5(cfg)
    enc_seg, dec_seg = packed(8, LENGTH), packed(8, 96, seed=1)
    keys = jax.random.split(jax.random.key(1), 2)
    batch = {
        "inputs": jax.random.randint(keys[0], enc_seg.shape, 0, cfg.vocab_size),
        "targets": jax.random.randint(keys[1], dec_seg.shape, 0, cfg.vocab_size),
        "enc_seg": enc_seg,
        "dec_seg": dec_seg,
        "enc_pos": positions_of(enc_seg),
        "dec_pos": positions_of(dec_seg),
    }

    def apply(params, batch, rng):
        logits = model.apply(
            {"params": params},
            batch["inputs"],
            batch["targets"],
            batch["enc_seg"] > 0,
            batch["dec_seg"] > 0,
            encoder_segment_ids=batch["enc_seg"],
            decoder_segment_ids=batch["dec_seg"],
            encoder_positions=batch["enc_pos"],
            decoder_positions=batch["dec_pos"],
            deterministic=False,
            rngs={"dropout": rng},
        )
        return logits, batch["dec_seg"] > 0

    params = model.init(jax.random.key(0), batch["inputs"][:1, :8], batch["targets"][:1, :8])
    return params["params"], batch, apply, pltpu.force_tpu_interpret_mode  # Flash: T5's bias.


def loss_and_grads(choice, params, batch, apply, run_mode, shardings=None):
    def loss(params, batch):
        out, valid = apply(params, batch, jax.random.key(7))
        cot = jax.random.normal(jax.random.key(3), out.shape, jnp.float32)
        return jnp.sum(out.astype(jnp.float32) * cot * valid[..., None]) / jnp.sum(valid)

    fn = jax.value_and_grad(loss)
    if choice is not None:
        fn = attention.traced_with(choice, fn)
    jitted = jax.jit(fn) if shardings is None else jax.jit(fn, in_shardings=shardings)
    with run_mode():
        value, grads = jitted(params, batch)
    return float(value), grads


def assert_same(got, want):
    (loss, grads), (ref_loss, ref_grads) = got, want
    assert loss == pytest.approx(ref_loss, rel=2e-5, abs=2e-6)
    for (path, g), r in zip(
        jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads), strict=True
    ):
        g, r = np.asarray(g), np.asarray(r)
        np.testing.assert_allclose(
            g, r, atol=2e-4 * np.abs(r).max() + 1e-7, err_msg=jax.tree_util.keystr(path)
        )


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
@pytest.mark.parametrize(
    "case", [gpt_case, bert_case, t5_case, llama_case], ids=["gpt", "bert", "t5", "llama"]
)
def test_training_loss_and_grads_match_xla(case):
    params, batch, apply, run_mode = case()
    want = loss_and_grads(None, params, batch, apply, contextlib.nullcontext)
    assert_same(loss_and_grads(SPLASH, params, batch, apply, run_mode), want)


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_sharded_over_a_mesh_matches_one_device():
    """Splash under shard_map on a (data=4, tensor=2) mesh: batch rows and heads split as the
    trainer splits activations; the same loss and gradients as XLA on one device."""
    params, batch, apply, _ = gpt_case()
    want = loss_and_grads(None, params, batch, apply, contextlib.nullcontext)
    devices = np.array(jax.devices()[:8]).reshape(4, 1, 2)
    mesh = jax.sharding.Mesh(devices, ("data", "fsdp", "tensor"))
    choice = dataclasses.replace(parallel.attention_on(attention.SPLASH, mesh), interpret=True)
    assert choice.batch_axes == ("data", "fsdp") and choice.heads_axes == ("tensor",)
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shardings = (jax.tree.map(lambda _: replicated, params), jax.tree.map(lambda _: rows, batch))
    got = loss_and_grads(choice, params, batch, apply, contextlib.nullcontext, shardings)
    assert_same(got, want)
