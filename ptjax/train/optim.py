"""The one optimizer factory: AdamW with a weight-decay mask, warm-up + decay, clipping."""

from __future__ import annotations

import logging
import math
from typing import Any

import ml_collections
import numpy as np
import optax
from flax import traverse_util


def learning_rate_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warm-up to the peak, then cosine / linear decay to peak * end fraction (or flat)."""
    peak = opt.learning_rate
    end = peak * opt.end_learning_rate_fraction
    warmup = optax.linear_schedule(0.0, peak, max(opt.warmup_steps, 1))
    decay_steps = max(total_steps - opt.warmup_steps, 1)
    if opt.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=opt.end_learning_rate_fraction)
    elif opt.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    else:
        decay = optax.constant_schedule(peak)
    if opt.warmup_steps == 0:
        return decay
    return optax.join_schedules([warmup, decay], [opt.warmup_steps])


def decay_mask(params: Any, decay_embeddings: bool) -> Any:
    """True where weight decay applies: matrices (Dense kernels), and embeddings if asked.

    Biases and LayerNorm scales/biases are never decayed.
    """
    flat = traverse_util.flatten_dict(params)
    mask = {}
    for path, leaf in flat.items():
        name = path[-1]
        if name == "embedding":
            mask[path] = decay_embeddings
        else:
            mask[path] = name == "kernel" and np.ndim(leaf) >= 2
    return traverse_util.unflatten_dict(mask)


def count_decayed(params: Any, mask: Any) -> tuple[int, int]:
    """(decayed, not decayed) parameter counts."""
    flat_p = traverse_util.flatten_dict(params)
    flat_m = traverse_util.flatten_dict(mask)
    pairs = [(math.prod(np.shape(flat_p[k])), bool(flat_m[k])) for k in flat_p]
    decayed = sum(n for n, m in pairs if m)
    return decayed, sum(n for n, _ in pairs) - decayed


def make_optimizer(
    opt: ml_collections.ConfigDict, total_steps: int, params: Any
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW over `params`' structure; logs how many parameters are decayed."""
    schedule = learning_rate_schedule(opt, total_steps)
    mask = decay_mask(params, opt.decay_embeddings)
    decayed, plain = count_decayed(params, mask)
    logging.info(
        "Weight decay %.3g on %d parameters; %d parameters not decayed.",
        opt.weight_decay,
        decayed,
        plain,
    )
    chain = []
    if opt.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    chain.append(
        optax.adamw(
            schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=mask
        )
    )
    return optax.chain(*chain), schedule
