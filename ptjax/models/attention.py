"""Attention kernels behind one switch, config key `model.attention`.

- 'xla': `ptjax.models.layers.dot_product_attention`, plain XLA; the reference every kernel is
  tested against (tests/test_attention_kernels.py).
- 'splash': on TPU, the Pallas splash attention kernel (jax.experimental.pallas.ops.tpu),
  causal or bidirectional, with segment ids. Attention that adds a bias (T5's relative
  positions) takes Pallas flash attention instead, which adds the bias and returns its gradient.
- 'cudnn': on GPU, `jax.nn.dot_product_attention(implementation='cudnn')`, cuDNN's fused
  attention: causal by flag; packed or padded rows by a mask, which cuDNN applies as a bias.
- 'auto': splash on TPU, cudnn on GPU where cuDNN is found, xla on CPU.

A kernel is told which keys each query may see by a `Mask` (causal or not, segment ids, valid
keys), never by a materialised [batch, q, kv] mask. The XLA path builds that mask from it.
Where a kernel cannot do what a call asks, the call takes XLA and the log says why, once per
reason: attention-probability dropout in training (no kernel draws it), a decoding cache (one
query per step attending to a cache, XLA's), a dtype or head width the kernel does not take.

Splash and flash see segment ids only. Padding keys get an id no query has; a query that would
then see no key at all (a padding row; a padding query of a packed row) takes the id of key 0
instead, so that every softmax has a key: its output is not the XLA path's (there, such a row
averages every key) and is masked out by every loss. Lengths are padded to the kernels' block.

The choice (`Choice`) is made once per run from the devices the steps run on (`resolve`) and
entered by whoever traces a step (`use` / `traced_with`: ptjax.train.parallel,
ptjax.decoding.generator); code traced outside one (a notebook) takes XLA. On a mesh the Pallas
kernels run under `jax.shard_map` over the batch and head axes, since XLA cannot partition a
Pallas call; cuDNN's call partitions itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging
from flax import struct

Array = jax.Array

XLA, SPLASH, CUDNN = "xla", "splash", "cudnn"
KERNELS = (XLA, CUDNN, SPLASH)
SETTINGS = ("auto", *KERNELS)  # Config key model.attention.

_BLOCK = 128  # The Pallas TPU kernels' smallest block; lengths are padded to a multiple.


@struct.dataclass
class Mask:
    """Which keys each query may attend to: key j is allowed for query i when

        (not causal or j <= i) and q_segments[i] == kv_segments[j] and kv_valid[j]

    with each part left out when None. `dense` materialises it for the XLA path.
    """

    q_segments: Array | None = None  # [batch, q_len] int; packed documents
    kv_segments: Array | None = None  # [batch, kv_len] int
    kv_valid: Array | None = None  # [batch, kv_len] bool/int: False/0 on padding keys
    causal: bool = struct.field(pytree_node=False, default=False)

    @property
    def segmented(self) -> bool:
        return self.q_segments is not None and self.kv_segments is not None

    def dense(self, q_len: int, kv_len: int) -> Array | None:
        """[batch or 1, 1, q_len or 1, kv_len] bool (the query axis 1 when only padding keys
        are masked), or None when every key is allowed."""
        parts = []
        if self.causal:
            parts.append((jnp.arange(q_len)[:, None] >= jnp.arange(kv_len)[None, :])[None, None])
        if self.segmented:
            parts.append((self.q_segments[:, :, None] == self.kv_segments[:, None, :])[:, None])
        if self.kv_valid is not None:
            parts.append(self.kv_valid.astype(bool)[:, None, None, :])
        if not parts:
            return None
        return functools.reduce(jnp.logical_and, parts)


@dataclasses.dataclass(frozen=True)
class Choice:
    """The attention kernel a run's steps are traced with, and where they run: on a mesh, its
    axes that split the batch and the heads (the Pallas kernels run per shard over them)."""

    kernel: str = XLA
    mesh: jax.sharding.Mesh | None = None
    batch_axes: tuple[str, ...] = ()
    heads_axes: tuple[str, ...] = ()
    # Tests on the CPU: splash interpreted; flash needs the caller to run (not only trace) the
    # step under pltpu.force_tpu_interpret_mode(), which splash cannot take under vmap.
    interpret: bool = False


_CHOICE: contextvars.ContextVar[Choice | None] = contextvars.ContextVar(
    "ptjax_attention", default=None
)


def cudnn_problem() -> str | None:
    """Why cuDNN's fused attention cannot be traced here (None: it can). It is traced (not
    run) on a tiny bf16 input, so that a missing cuDNN says so in its own words."""
    return _cudnn_problem()


@functools.cache
def _cudnn_problem() -> str | None:
    x = jax.ShapeDtypeStruct((1, 128, 1, 64), jnp.bfloat16)
    try:
        jax.eval_shape(
            functools.partial(jax.nn.dot_product_attention, implementation="cudnn"), x, x, x
        )
    except Exception as e:  # noqa: BLE001 - any refusal means: not here.
        return f"{type(e).__name__}: {e}".strip()
    return None


def resolve(setting: str, platform: str) -> tuple[str, str]:
    """(kernel, why) for steps on `platform` ('cpu', 'gpu', 'cuda', 'rocm', 'tpu') under
    model.attention=`setting`. A kernel asked for by name on a platform it does not run on is
    refused with ValueError; 'auto' falls back to XLA and says why."""
    if setting not in SETTINGS:
        raise ValueError(f"model.attention={setting!r} is not one of {', '.join(SETTINGS)}.")
    gpu = platform in ("gpu", "cuda")
    if setting == XLA:
        return XLA, "model.attention=xla"
    if setting == SPLASH:
        if platform != "tpu":
            raise ValueError(
                f"model.attention=splash runs on TPU, not {platform}: its Pallas TPU kernels "
                "run elsewhere only interpreted, which tests do under "
                "pltpu.force_tpu_interpret_mode(); use 'auto' or 'xla'."
            )
        return SPLASH, "model.attention=splash"
    if setting == CUDNN:
        if not gpu:
            raise ValueError(f"model.attention=cudnn runs on NVIDIA GPUs, not {platform}.")
        problem = cudnn_problem()
        if problem:
            raise ValueError(f"model.attention=cudnn, but cuDNN's attention is unusable: {problem}")
        return CUDNN, "model.attention=cudnn"
    if platform == "tpu":
        return SPLASH, "model.attention=auto on TPU"
    if gpu:
        problem = cudnn_problem()
        if problem:
            return XLA, f"model.attention=auto on GPU, but cuDNN's attention is unusable: {problem}"
        return CUDNN, "model.attention=auto on GPU"
    return XLA, f"model.attention=auto on {platform}"


def choose(
    setting: str,
    devices: Sequence[Any],
    mesh: jax.sharding.Mesh | None = None,
    batch_axes: tuple[str, ...] = (),
    heads_axes: tuple[str, ...] = (),
) -> Choice:
    """The Choice for steps on `devices` (and `mesh` with its batch and head axes, if any),
    logging what was chosen and why."""
    platforms = {d.platform for d in devices}
    if len(platforms) != 1:
        raise ValueError(f"A step's devices must share one platform, not {sorted(platforms)}.")
    kernel, why = resolve(setting, platforms.pop())
    logging.info("Attention: %s (%s).", kernel, why)
    return Choice(kernel, mesh, tuple(batch_axes), tuple(heads_axes))


@contextlib.contextmanager
def use(choice: Choice | None) -> Iterator[None]:
    """While a step is traced: its attention takes `choice` (None leaves it as it is)."""
    if choice is None:
        yield
        return
    token = _CHOICE.set(choice)
    try:
        yield
    finally:
        _CHOICE.reset(token)


def traced_with(choice: Choice | None, fn: Callable) -> Callable:
    """`fn` entering use(`choice`) whenever it runs: wrap a function before jit traces it."""
    if choice is None:
        return fn

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with use(choice):
            return fn(*args, **kwargs)

    return run


def current() -> Choice:
    return _CHOICE.get() or Choice()


_SAID: set[str] = set()


def _say(message: str) -> None:
    if message not in _SAID:
        _SAID.add(message)
        logging.info("Attention: %s", message)


def fused(
    query: Array,  # [batch, q_len, heads, head_dim]
    key: Array,  # [batch, kv_len, heads, head_dim]
    value: Array,
    mask: Mask,
    bias: Array | None,  # [batch or 1, heads, q_len, kv_len]
    *,
    scale: float,
    dropout: bool,  # Attention-probability dropout is drawn in this call.
    dtype: Any,
    where: str = "attention",
) -> Array | None:
    """The attention of the run's kernel, [batch, q_len, heads, head_dim] in `dtype`; None when
    the call takes the XLA path (the choice is 'xla', or the kernel cannot do this call)."""
    choice = current()
    if choice.kernel == XLA:
        return None
    if dropout:
        _say(
            f"{where}: XLA in training, not {choice.kernel}: attention-probability dropout is "
            "drawn only by XLA's path (model.attention_dropout_rate=0 gives the kernel)."
        )
        return None
    if choice.kernel == CUDNN:
        return _cudnn(query, key, value, mask, bias, scale=scale, dtype=dtype, where=where)
    kernel = _flash if bias is not None else functools.partial(_splash, interpret=choice.interpret)
    if bias is not None:
        _say(f"{where}: Pallas flash attention (it adds the bias; splash takes none).")
    return _per_shard(kernel, choice, query, key, value, mask, bias, scale=scale).astype(dtype)


def _cudnn(query, key, value, mask: Mask, bias, *, scale: float, dtype: Any, where: str):
    if jnp.dtype(query.dtype) not in (jnp.bfloat16, jnp.float16):
        _say(f"{where}: XLA, not cudnn: cuDNN's attention takes bf16/fp16, not {query.dtype}.")
        return None
    head_dim = query.shape[-1]
    if head_dim > 128 or head_dim % 8:
        _say(f"{where}: XLA, not cudnn: head width {head_dim} (cuDNN's: <= 128, multiples of 8).")
        return None
    # Causality by flag; segments and padding keys as a mask, which cuDNN applies as a bias
    # (exact for packed rows, never dropped).
    # cuDNN takes a mask (as a bias) only with both sequence axes whole: BERT's padding mask,
    # [batch, 1, 1, kv_len], failed every step on an H200 (2026-12-04) until broadcast.
    rest = Mask(mask.q_segments, mask.kv_segments, mask.kv_valid, causal=False)
    dense = rest.dense(query.shape[1], key.shape[1])
    if dense is not None:
        dense = jnp.broadcast_to(dense, (*dense.shape[:2], query.shape[1], key.shape[1]))
    out = jax.nn.dot_product_attention(
        query,
        key,
        value,
        bias=None if bias is None else bias.astype(query.dtype),
        mask=dense,
        scale=scale,
        is_causal=mask.causal,
        implementation="cudnn",
    )
    return out.astype(dtype)


def segment_ids(mask: Mask, batch: int, q_len: int, kv_len: int) -> tuple[Array, Array]:
    """(q_ids [batch, q_len], kv_ids [batch, kv_len]) int32 that allow what `mask` allows
    besides causality, for kernels that take segment ids only (see the module docstring):
    padding keys get -1, and a query that would see no key takes key 0's id."""
    q_ids = jnp.zeros((batch, q_len), jnp.int32)
    kv_ids = jnp.zeros((batch, kv_len), jnp.int32)
    if mask.segmented:
        q_ids = jnp.broadcast_to(mask.q_segments, (batch, q_len)).astype(jnp.int32)
        kv_ids = jnp.broadcast_to(mask.kv_segments, (batch, kv_len)).astype(jnp.int32)
    if mask.kv_valid is not None:
        kv_ids = jnp.where(mask.kv_valid.astype(bool), kv_ids, -1)
    if mask.segmented or mask.kv_valid is not None:
        allowed = q_ids[:, :, None] == kv_ids[:, None, :]
        if mask.causal:
            allowed &= jnp.arange(q_len)[:, None] >= jnp.arange(kv_len)[None, :]
        q_ids = jnp.where(jnp.any(allowed, axis=-1), q_ids, kv_ids[:, :1])
    return q_ids, kv_ids


def _padded(x: Array, axis: int, length: int, value: Any = 0) -> Array:
    if x.shape[axis] == length:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, pad, constant_values=value)


def _round_up(n: int) -> int:
    return -(-n // _BLOCK) * _BLOCK


def _block(length: int) -> int:
    """The largest of 512, 256, 128 that divides `length` (a multiple of 128)."""
    return next(b for b in (512, 256, _BLOCK) if length % b == 0)


def _per_shard(kernel, choice: Choice, query, key, value, mask: Mask, bias, *, scale: float):
    """`kernel(q, k, v, q_ids, kv_ids, bias, causal)` on heads-first inputs padded to the block,
    under shard_map over the mesh's batch and head axes when there is a mesh."""
    batch, q_len, heads, _ = query.shape
    kv_len = key.shape[1]
    q_ids, kv_ids = segment_ids(mask, batch, q_len, kv_len)
    q_pad, kv_pad = _round_up(q_len), _round_up(kv_len)
    q = _padded(jnp.swapaxes(query * jnp.asarray(scale, query.dtype), 1, 2), 2, q_pad)
    k = _padded(jnp.swapaxes(key, 1, 2), 2, kv_pad)
    v = _padded(jnp.swapaxes(value, 1, 2), 2, kv_pad)
    # Padded queries see key 0 (and are dropped); padded keys have an id no query has.
    q_ids = jnp.concatenate(
        [q_ids, jnp.broadcast_to(kv_ids[:, :1], (batch, q_pad - q_len))], axis=1
    )
    kv_ids = _padded(kv_ids, 1, kv_pad, -2)
    if bias is not None:
        bias = jnp.broadcast_to(bias, (batch, heads, q_len, kv_len)).astype(jnp.float32)
        bias = _padded(_padded(bias, 2, q_pad), 3, kv_pad)
    run = functools.partial(kernel, causal=mask.causal)
    if choice.mesh is not None:
        run = _shard_mapped(run, choice, batch, heads, with_bias=bias is not None)
    out = run(q, k, v, q_ids, kv_ids, bias)  # [batch, heads, q_pad, head_dim]
    return jnp.swapaxes(out[:, :, :q_len], 1, 2)


def _shard_mapped(run: Callable, choice: Choice, batch: int, heads: int, with_bias: bool):
    mesh = choice.mesh
    sizes = dict(zip(mesh.axis_names, mesh.devices.shape, strict=True))

    def split(axes: tuple[str, ...], n: int) -> tuple[str, ...] | None:
        axes = tuple(a for a in axes if sizes.get(a, 1) > 1)
        return axes if axes and n % math.prod(sizes[a] for a in axes) == 0 else None

    rows, heads_over = split(choice.batch_axes, batch), split(choice.heads_axes, heads)
    P = jax.sharding.PartitionSpec
    qkv, ids = P(rows, heads_over), P(rows)
    return jax.shard_map(
        run,
        mesh=mesh,
        in_specs=(qkv, qkv, qkv, ids, ids, qkv if with_bias else None),
        out_specs=qkv,
        check_vma=False,
    )


@functools.lru_cache(maxsize=64)
def _splash_kernel(heads: int, q_len: int, kv_len: int, causal: bool, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as splash,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as masks,
    )

    shape = (q_len, kv_len)
    one = masks.CausalMask(shape) if causal else masks.FullMask(shape)
    bq, bkv = _block(q_len), _block(kv_len)
    blocks = splash.BlockSizes(
        block_q=bq,
        block_kv=bkv,
        block_kv_compute=bkv,
        block_q_dkv=bq,
        block_kv_dkv=bkv,
        block_kv_dkv_compute=bkv,
        block_q_dq=bq,
        block_kv_dq=bkv,
    )
    with jax.ensure_compile_time_eval():  # Concrete mask tables, safe to cache across traces.
        return splash.make_splash_mha(
            masks.MultiHeadMask([one] * heads),
            head_shards=1,
            q_seq_shards=1,
            block_sizes=blocks,
            interpret=interpret,
        )


def _splash(q, k, v, q_ids, kv_ids, bias, *, causal: bool, interpret: bool = False):
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as splash,
    )

    del bias  # None: splash takes no bias.
    kernel = _splash_kernel(q.shape[1], q.shape[2], k.shape[2], causal, interpret)

    def one(args):  # One row: [heads, length, head_dim].
        q, k, v, qi, ki = args
        return kernel(q, k, v, segment_ids=splash.SegmentIds(qi, ki))

    if interpret:  # Row by row: the TPU interpreter (flash's, on the CPU) takes no vmap.
        return jax.lax.map(one, (q, k, v, q_ids, kv_ids))
    return jax.vmap(lambda *args: one(args))(q, k, v, q_ids, kv_ids)


def _flash(q, k, v, q_ids, kv_ids, bias, *, causal: bool):
    from jax.experimental.pallas.ops.tpu import flash_attention as flash

    batch, heads, q_len, head_dim = q.shape
    kv_len = k.shape[2]
    bq, bkv = _block(q_len), _block(kv_len)
    blocks = flash.BlockSizes(
        block_q=bq,
        block_k_major=bkv,
        block_k=bkv,
        block_b=1,
        block_q_major_dkv=bq,
        block_k_major_dkv=bkv,
        block_k_dkv=bkv,
        block_q_dkv=bq,
        block_k_major_dq=bkv,
        block_k_dq=bkv,
        block_q_dq=bq,
    )
    return flash.flash_attention(
        q,
        k,
        v,
        bias,  # float32, as the XLA path adds it
        segment_ids=flash.SegmentIds(q_ids, kv_ids),
        causal=causal,
        sm_scale=1.0,
        block_sizes=blocks,
    )
