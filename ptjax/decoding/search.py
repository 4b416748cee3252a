"""Decoding loops that know nothing about the model but two functions.

A model is decoded through
  prefill(params, prompt [batch, prompt_len], prompt_mask) -> (logits [batch, vocab], cache)
  step(params, tokens [batch], cache) -> (logits [batch, vocab], cache)
where `logits` are for the next position and every leaf of `cache` has the batch as its leading
axis (so beam search can reorder it). Everything runs inside one `jax.jit` with `lax.while_loop`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ptjax import argmax, backend

Array = jax.Array
PrefillFn = Callable[[Any, Array, Array], tuple[Array, Any]]
StepFn = Callable[[Any, Array, Any], tuple[Array, Any]]

NEG_INF = -1e10


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How to pick tokens. temperature 0 is greedy; num_beams > 1 is beam search."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k filter.
    top_p: float = 1.0  # 1.0: no nucleus filter.
    num_beams: int = 1
    length_penalty: float = 1.0  # Beam scores are sum(log p) / length ** length_penalty.
    early_stopping: bool = True  # Beam search stops once each row has num_beams finished.
    eos_id: int = 1
    pad_id: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}.")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}.")
        if self.num_beams > 1 and self.temperature > 0:
            raise ValueError("Beam search is deterministic: use temperature=0 with num_beams > 1.")


def greedy_pick(logits: Array) -> Array:
    """argmax over the last axis (the first index of the maximum): jnp.argmax, or in steps that
    take the CPU forms (ptjax.backend) `ptjax.argmax`.

    Same result as jnp.argmax; XLA:CPU runs argmax's (value, index) reduction several times
    slower, which matters once per decoding step over the vocabulary (180 -> 60 us for
    [8, 32000] here). A row whose maximum is NaN gives an index in range.
    """
    if backend.cpu_forms():
        return argmax.argmax(logits)
    return jnp.argmax(logits, axis=-1)


def filter_logits(logits: Array, *, top_k: int = 0, top_p: float = 1.0) -> Array:
    """Sets logits outside the top-k and then outside the top-p nucleus to NEG_INF.

    The nucleus is the smallest set of most likely tokens whose probability reaches top_p (the
    most likely token is always kept). Both filters may be combined, top-k first.
    """
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]  # [batch, 1]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # Mass of strictly likelier tokens.
        keep_sorted = mass_before < top_p
        keep = (
            jnp.zeros_like(keep_sorted)
            .at[jnp.arange(logits.shape[0])[:, None], order]
            .set(keep_sorted)
        )
        logits = jnp.where(keep, logits, NEG_INF)
    return logits


def sample(
    prefill: PrefillFn,
    step: StepFn,
    params: Any,
    prompt: Array,
    prompt_mask: Array,
    rng: Array,
    cfg: DecodeConfig,
) -> tuple[Array, Array]:
    """Greedy (temperature 0) or sampled decoding.

    Returns (tokens [batch, max_new_tokens] padded with pad_id after EOS, lengths [batch]); a
    row's length counts its EOS.
    """
    batch = prompt.shape[0]
    logits, cache = prefill(params, prompt, prompt_mask)

    def pick(logits: Array, t: Array) -> Array:
        if cfg.temperature == 0.0:
            return greedy_pick(logits)
        scaled = logits.astype(jnp.float32) / cfg.temperature
        scaled = filter_logits(scaled, top_k=cfg.top_k, top_p=cfg.top_p)
        return jax.random.categorical(jax.random.fold_in(rng, t), scaled).astype(jnp.int32)

    def cond(carry):
        t, _, _, _, done, _ = carry
        return jnp.logical_and(t < cfg.max_new_tokens, jnp.logical_not(jnp.all(done)))

    def body(carry):
        t, logits, cache, tokens, done, lengths = carry
        token = jnp.where(done, cfg.pad_id, pick(logits, t))
        tokens = tokens.at[:, t].set(token)
        lengths = lengths + jnp.logical_not(done).astype(jnp.int32)
        done = jnp.logical_or(done, token == cfg.eos_id)
        logits, cache = step(params, token, cache)
        return t + 1, logits, cache, tokens, done, lengths

    tokens = jnp.full((batch, cfg.max_new_tokens), cfg.pad_id, jnp.int32)
    init = (
        jnp.zeros((), jnp.int32),
        logits,
        cache,
        tokens,
        jnp.zeros((batch,), bool),
        jnp.zeros((batch,), jnp.int32),
    )
    _, _, _, tokens, _, lengths = jax.lax.while_loop(cond, body, init)
    return tokens, lengths


def _gather_beams(tree: Any, beam_index: Array, batch: int, beams: int) -> Any:
    """Reorders every [batch * beams, ...] leaf by beam_index [batch, beams]."""

    def gather(x: Array) -> Array:
        x = x.reshape(batch, beams, *x.shape[1:])
        idx = beam_index.reshape(batch, beams, *([1] * (x.ndim - 2)))
        return jnp.take_along_axis(x, idx, axis=1).reshape(batch * beams, *x.shape[2:])

    return jax.tree.map(gather, tree)


def beam_search(
    prefill: PrefillFn,
    step: StepFn,
    params: Any,
    prompt: Array,
    prompt_mask: Array,
    cfg: DecodeConfig,
) -> tuple[Array, Array, Array]:
    """Beam search with a length penalty and early stopping on EOS.

    Returns (tokens [batch, max_new_tokens], lengths [batch], scores [batch]) of the best
    hypothesis per row, where score = sum(log p) / length ** length_penalty and a hypothesis
    ending in EOS counts the EOS in its length.
    """
    batch, k, max_new = prompt.shape[0], cfg.num_beams, cfg.max_new_tokens
    logits, cache = prefill(params, prompt, prompt_mask)
    vocab = logits.shape[-1]
    # Every row starts as k identical beams; only the first is alive so the first step picks
    # k different tokens instead of the same one k times.
    logits = jnp.repeat(logits, k, axis=0)
    cache = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), cache)

    def norm(logp: Array, length: Array) -> Array:
        return logp / jnp.power(length.astype(jnp.float32), cfg.length_penalty)

    def cond(carry):
        t, _, _, _, alive_logp, _, fin_score = carry
        not_max = t < max_new
        if not cfg.early_stopping:
            return not_max
        # A row is done when its worst finished hypothesis beats the best any alive beam can
        # still reach (for length_penalty > 0 that is its score at the longest length).
        best_len = jnp.where(cfg.length_penalty > 0, max_new, t + 1)
        best_alive = norm(alive_logp[:, 0], best_len)
        worst_finished = jnp.min(fin_score, axis=1)
        row_done = worst_finished >= best_alive
        return jnp.logical_and(not_max, jnp.logical_not(jnp.all(row_done)))

    def body(carry):
        t, logits, cache, alive_seq, alive_logp, fin_seq, fin_score = carry
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(batch, k, vocab)
        cand = (alive_logp[:, :, None] + logp).reshape(batch, k * vocab)
        # 2k candidates guarantee k that do not end in EOS.
        top_logp, top_idx = jax.lax.top_k(cand, 2 * k)  # [batch, 2k]
        top_beam, top_tok = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
        top_seq = jnp.take_along_axis(alive_seq, top_beam[:, :, None], axis=1)
        top_seq = top_seq.at[:, :, t].set(top_tok)  # [batch, 2k, max_new]
        is_eos = top_tok == cfg.eos_id
        last = t == max_new - 1

        # Finished: EOS candidates, and at the last step every candidate.
        finishing = jnp.logical_or(is_eos, last)
        new_fin = jnp.where(finishing, norm(top_logp, t + 1), NEG_INF)
        all_seq = jnp.concatenate([fin_seq, top_seq], axis=1)
        all_score = jnp.concatenate([fin_score, new_fin], axis=1)
        fin_score, fin_idx = jax.lax.top_k(all_score, k)
        fin_seq = jnp.take_along_axis(all_seq, fin_idx[:, :, None], axis=1)

        # Alive: the k best candidates that did not end in EOS.
        alive_cand = jnp.where(is_eos, NEG_INF, top_logp)
        alive_logp, alive_idx = jax.lax.top_k(alive_cand, k)
        alive_seq = jnp.take_along_axis(top_seq, alive_idx[:, :, None], axis=1)
        beam_index = jnp.take_along_axis(top_beam, alive_idx, axis=1)
        tokens = jnp.take_along_axis(top_tok, alive_idx, axis=1).reshape(batch * k)
        cache = _gather_beams(cache, beam_index, batch, k)
        logits, cache = step(params, tokens, cache)
        return t + 1, logits, cache, alive_seq, alive_logp, fin_seq, fin_score

    alive_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))
    seq0 = jnp.full((batch, k, max_new), cfg.pad_id, jnp.int32)
    init = (
        jnp.zeros((), jnp.int32),
        logits,
        cache,
        seq0,
        alive_logp,
        seq0,
        jnp.full((batch, k), NEG_INF, jnp.float32),
    )
    t, _, _, alive_seq, alive_logp, fin_seq, fin_score = jax.lax.while_loop(cond, body, init)
    # Rows that finished nothing (possible only if stopped early) fall back to the best alive.
    has_fin = fin_score[:, 0] > NEG_INF / 2
    best = jnp.where(has_fin[:, None], fin_seq[:, 0], alive_seq[:, 0])
    score = jnp.where(has_fin, fin_score[:, 0], norm(alive_logp[:, 0], t))
    # Clean everything after the first EOS and count the length including it.
    is_eos = best == cfg.eos_id
    after_eos = jnp.cumsum(is_eos, axis=1) - is_eos > 0
    best = jnp.where(after_eos, cfg.pad_id, best)
    first_eos = jnp.argmax(is_eos, axis=1)
    lengths = jnp.where(jnp.any(is_eos, axis=1), first_eos + 1, t).astype(jnp.int32)
    return best, lengths, score
