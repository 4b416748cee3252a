"""Attention kernels against the XLA reference (ptjax.models.attention).

Every kernel, on packed rows (2-4 segments), left- and right-padded rows, causal and
bidirectional masks, self- and cross-attention, lengths that are not a multiple of the block,
float32 and bf16: outputs and the gradients of q, k, v (and the bias) at every query that has a
key to see. The Pallas TPU kernels run on the CPU interpreted; cuDNN runs where a GPU is.
"""

from __future__ import annotations

import contextlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from ptjax.models import attention, layers

HEADS, HEAD_DIM = 2, 64


def packed_segments(
    rng: np.random.Generator, batch: int, length: int, docs: np.ndarray | None = None
) -> np.ndarray:
    """[batch, length] ids 1..n of n documents per row (`docs`; default 2-4), then padding (0)
    at the end."""
    if docs is None:
        docs = rng.integers(2, 5, batch)
    rows = []
    for n in docs:
        used = int(rng.integers(length * 3 // 4, length + 1))
        cuts = np.sort(rng.choice(np.arange(1, used), n - 1, replace=False))
        row = np.zeros(length, np.int32)
        for i, (a, b) in enumerate(zip([0, *cuts], [*cuts, used], strict=True)):
            row[a:b] = i + 1
        rows.append(row)
    return np.stack(rows)


def left_padded(rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    """[batch, length] bool, True on the real tokens after each row's left padding."""
    starts = rng.integers(0, length // 2, batch)
    return np.arange(length)[None, :] >= starts[:, None]


def right_padded(rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    ends = rng.integers(length // 2, length + 1, batch)
    ends[0] = length  # One row without padding.
    return np.arange(length)[None, :] < ends[:, None]


def case(name: str, batch: int, q_len: int, kv_len: int, seed: int = 0):
    """(mask, query rows that see a key) for a named masking case."""
    rng = np.random.default_rng(seed)
    if name == "causal packed":
        seg = packed_segments(rng, batch, q_len)
        return attention.Mask(seg, seg, causal=True)
    if name == "causal left-padded":
        return attention.Mask(kv_valid=left_padded(rng, batch, q_len), causal=True)
    if name == "causal packed and padded keys":
        seg = packed_segments(rng, batch, q_len)
        return attention.Mask(seg, seg, kv_valid=seg > 0, causal=True)
    if name == "bidirectional padded":
        return attention.Mask(kv_valid=right_padded(rng, batch, kv_len))
    if name == "bidirectional packed":
        seg = packed_segments(rng, batch, q_len)
        return attention.Mask(seg, seg, kv_valid=seg > 0)
    if name == "cross packed":
        docs = rng.integers(2, 5, batch)  # Each row's documents: targets, then inputs.
        q_seg = packed_segments(rng, batch, q_len, docs)
        kv_seg = packed_segments(rng, batch, kv_len, docs)
        return attention.Mask(q_seg, kv_seg, kv_valid=kv_seg > 0)
    if name == "cross padded":
        return attention.Mask(kv_valid=right_padded(rng, batch, kv_len))
    raise ValueError(name)


def seen(mask: attention.Mask, q_len: int, kv_len: int) -> np.ndarray:
    """[batch, q_len] bool: queries with at least one key to see, and not padding queries
    (segment 0 of a packed row): the rows a loss reads."""
    if mask.kv_valid is None and mask.q_segments is None:
        return np.ones((1, q_len), bool)
    dense = np.asarray(mask.dense(q_len, kv_len))  # [batch or 1, 1, q, kv]
    rows = dense.any(axis=-1)[:, 0]
    if mask.q_segments is not None:
        rows = rows & (np.asarray(mask.q_segments) > 0)
    return np.broadcast_to(rows, (rows.shape[0], q_len))


def inputs(batch: int, q_len: int, kv_len: int, dtype, bias: bool, seed: int = 1):
    keys = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(keys[0], (batch, q_len, HEADS, HEAD_DIM)).astype(dtype)
    k = jax.random.normal(keys[1], (batch, kv_len, HEADS, HEAD_DIM)).astype(dtype)
    v = jax.random.normal(keys[2], (batch, kv_len, HEADS, HEAD_DIM)).astype(dtype)
    b = jax.random.normal(keys[3], (1, HEADS, q_len, kv_len)) if bias else None
    cot = jax.random.normal(keys[4], (batch, q_len, HEADS, HEAD_DIM))
    return q, k, v, b, cot


def attend(choice, q, k, v, b, mask, dtype):
    """The attention under `choice`, always through the kernel when it is not XLA."""
    with attention.use(choice):
        if choice.kernel != attention.XLA:
            out = attention.fused(
                q, k, v, mask, b, scale=HEAD_DIM**-0.5, dropout=False, dtype=dtype
            )
            assert out is not None, "the kernel declined a call it should take"
            return out
        return layers.dot_product_attention(q, k, v, mask, b, dtype=dtype)


def outputs_and_grads(choice, q, k, v, b, cot, mask, rows, dtype, interpret_mode):
    weights = jnp.asarray(rows, jnp.float32)[:, :, None, None]

    def loss(q, k, v, b):
        out = attend(choice, q, k, v, b, mask, dtype).astype(jnp.float32)
        return jnp.sum(out * cot * weights), out

    argnums = (0, 1, 2, 3) if b is not None else (0, 1, 2)
    fn = jax.jit(jax.value_and_grad(loss, argnums=argnums, has_aux=True))
    with interpret_mode():
        (_, out), grads = fn(q, k, v, b)
    return out, grads


SPLASH = attention.Choice(attention.SPLASH, interpret=True)
CASES = [
    "causal packed",
    "causal left-padded",
    "causal packed and padded keys",
    "bidirectional padded",
    "bidirectional packed",
    "cross packed",
    "cross padded",
]


def tolerance(dtype) -> float:
    return 2e-5 if dtype == jnp.float32 else 3e-2


def check_against_reference(name, dtype, bias, q_len=200, kv_len=200, batch=2):
    if name.startswith("cross"):
        kv_len = kv_len + 100  # 300: three 128-blocks once padded.
    mask = case(name, batch, q_len, kv_len)
    rows = seen(mask, q_len, kv_len)
    q, k, v, b, cot = inputs(batch, q_len, kv_len, dtype, bias)
    forced = pltpu.force_tpu_interpret_mode if bias else contextlib.nullcontext
    ref_out, ref_grads = outputs_and_grads(
        attention.Choice(), q, k, v, b, cot, mask, rows, dtype, contextlib.nullcontext
    )
    out, grads = outputs_and_grads(SPLASH, q, k, v, b, cot, mask, rows, dtype, forced)
    tol = tolerance(dtype)
    r = rows[:, :, None, None]
    scale = float(jnp.max(jnp.abs(ref_out)))
    np.testing.assert_allclose(
        np.where(r, np.asarray(out), 0), np.where(r, np.asarray(ref_out), 0), atol=tol * scale
    )
    for got, want, what in zip(grads, ref_grads, "qkvb", strict=False):
        got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
        assert np.isfinite(got).all(), f"d{what} has non-finite values"
        np.testing.assert_allclose(
            got, want, atol=tol * float(np.abs(want).max()), err_msg=f"d{what} ({name}, {dtype})"
        )


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
@pytest.mark.parametrize("name", CASES)
def test_splash_matches_xla_float32(name):
    check_against_reference(name, jnp.float32, bias=False)


@pytest.mark.parametrize("name", ["causal packed", "bidirectional padded", "cross packed"])
def test_splash_matches_xla_bf16(name):
    check_against_reference(name, jnp.bfloat16, bias=False)


@pytest.mark.parametrize("name", ["causal packed", "bidirectional packed", "causal left-padded"])
def test_flash_with_bias_matches_xla(name):
    """T5's relative-position bias goes to Pallas flash attention, gradient of the bias too."""
    check_against_reference(name, jnp.float32, bias=True)


def test_flash_with_bias_bf16():
    check_against_reference("bidirectional padded", jnp.bfloat16, bias=True)


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_packed_rows_stay_apart():
    """Each packed document's output equals attention over that document alone: a kernel that
    ignored segment ids would mix them (and would differ from attention over the whole row)."""
    length, mask = 200, case("causal packed", 1, 200, 200)
    q, k, v, _, _ = inputs(1, length, length, jnp.float32, bias=False)
    with attention.use(SPLASH):
        out = attention.fused(q, k, v, mask, None, scale=0.125, dropout=False, dtype=jnp.float32)
    seg = np.asarray(mask.q_segments)[0]
    for doc in range(1, seg.max() + 1):
        at = np.nonzero(seg == doc)[0]
        alone = layers.dot_product_attention(
            q[:, at], k[:, at], v[:, at], layers.causal_mask(len(at)), scale=0.125
        )
        np.testing.assert_allclose(np.asarray(out[:, at]), np.asarray(alone), atol=2e-5)
    whole = layers.dot_product_attention(q, k, v, layers.causal_mask(length), scale=0.125)
    assert np.abs(np.asarray(out) - np.asarray(whole))[:, seg == 2].max() > 1e-2


def test_kernel_declines_dropout_and_says_why(caplog):
    mask = attention.Mask(causal=True)
    q, k, v, _, _ = inputs(1, 128, 128, jnp.float32, bias=False)
    with attention.use(SPLASH), caplog.at_level("INFO"):
        out = attention.fused(
            q, k, v, mask, None, scale=0.125, dropout=True, dtype=jnp.float32, where="probe"
        )
    assert out is None
    assert "attention-probability dropout" in caplog.text


def test_segment_ids_give_every_query_a_key():
    """A padding query of a packed row whose keys are all real (no padding keys) would see no
    key: it takes key 0's id, so no softmax is empty."""
    seg = np.array([[1, 1, 2, 2, 0, 0]])
    mask = attention.Mask(seg, np.array([[1, 1, 2, 2, 2, 2]]))
    q_ids, kv_ids = attention.segment_ids(mask, 1, 6, 6)
    assert np.asarray(q_ids).tolist() == [[1, 1, 2, 2, 1, 1]]
    mask = attention.Mask(kv_valid=np.array([[0, 1, 1, 1]]), causal=True)  # Left padding.
    q_ids, kv_ids = attention.segment_ids(mask, 1, 4, 4)
    assert np.asarray(kv_ids).tolist() == [[-1, 0, 0, 0]]
    assert np.asarray(q_ids).tolist() == [[-1, 0, 0, 0]]


@pytest.mark.skipif(not any(d.platform == "gpu" for d in jax.devices()), reason="needs a GPU")
@pytest.mark.parametrize("name", ["causal packed", "bidirectional padded", "cross packed"])
def test_cudnn_matches_xla(name):
    choice = attention.Choice(attention.CUDNN)
    batch, q_len, kv_len, dtype = 2, 200, 300 if name.startswith("cross") else 200, jnp.bfloat16
    mask = case(name, batch, q_len, kv_len)
    rows = seen(mask, q_len, kv_len)
    q, k, v, b, cot = inputs(batch, q_len, kv_len, dtype, bias=False)
    none = contextlib.nullcontext
    ref_out, ref_grads = outputs_and_grads(
        attention.Choice(), q, k, v, b, cot, mask, rows, dtype, none
    )
    out, grads = outputs_and_grads(choice, q, k, v, b, cot, mask, rows, dtype, none)
    r = rows[:, :, None, None]
    np.testing.assert_allclose(
        np.where(r, np.asarray(out, np.float32), 0),
        np.where(r, np.asarray(ref_out, np.float32), 0),
        atol=3e-2 * float(jnp.max(jnp.abs(ref_out))),
    )
    for got, want in zip(grads, ref_grads, strict=True):
        want = np.asarray(want, np.float32)
        np.testing.assert_allclose(
            np.asarray(got, np.float32), want, atol=3e-2 * np.abs(want).max()
        )


@pytest.mark.parametrize(
    "name", ["causal packed", "bidirectional padded", "causal left-padded", "cross packed"]
)
def test_cudnn_takes_every_mask_when_lowered_for_cuda(name, monkeypatch):
    """The cuDNN call (forward and gradients) lowered for CUDA on this CPU, with what only a GPU
    has stood in for (cuDNN's version and the compute capability): jax's cuDNN wrapper checks
    the mask's shape before it lowers. BERT's padding mask, [batch, 1, 1, kv_len], failed every
    step on an H200 (2026-12-04) while the test above skipped here."""
    from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention

    monkeypatch.setattr(cudnn_attention, "check_cudnn_version", lambda: 91000)
    monkeypatch.setattr(cudnn_attention, "check_compute_capability", lambda c: True)
    monkeypatch.setattr(cudnn_attention, "is_cuda_compute_capability_equal", lambda c: False)
    batch, q_len, kv_len, dtype = 2, 128, 256 if name.startswith("cross") else 128, jnp.bfloat16
    mask = case(name, batch, q_len, kv_len)
    q, k, v, _, cot = inputs(batch, q_len, kv_len, dtype, bias=False)

    def loss(q, k, v):
        out = attend(attention.Choice(attention.CUDNN), q, k, v, None, mask, dtype)
        return jnp.sum(out.astype(jnp.float32) * cot)

    text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, k, v)
    text = text.lower(lowering_platforms=("cuda",)).as_text()
    calls = set(re.findall(r"__cudnn\$\w+", text))
    assert calls == {"__cudnn$fmhaScaleBiasSoftmax", "__cudnn$fmhaScaleBiasSoftmaxBackward"}


def test_resolve_per_platform():
    assert attention.resolve("auto", "tpu")[0] == attention.SPLASH
    assert attention.resolve("auto", "cpu")[0] == attention.XLA
    kernel, why = attention.resolve("auto", "cuda")
    if attention.cudnn_problem():  # This machine has no cuDNN: auto says so and takes XLA.
        assert kernel == attention.XLA and "cuDNN" in why
    else:
        assert kernel == attention.CUDNN
    assert attention.resolve("xla", "tpu")[0] == attention.XLA
    with pytest.raises(ValueError, match="runs on TPU"):
        attention.resolve("splash", "cpu")
    with pytest.raises(ValueError, match="NVIDIA"):
        attention.resolve("cudnn", "tpu")
    with pytest.raises(ValueError, match="not one of"):
        attention.resolve("flash", "tpu")
