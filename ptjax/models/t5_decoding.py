"""T5's incremental decoding for ptjax.decoding: the self-attention cache, `decode_fns`'
prefill (encode the inputs, project the cross-attention keys and values once) and step, and
the parameters laid out for them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ptjax.models import layers, scan
from ptjax.models.t5 import DECODER_START_ID, T5, T5Config

Array = jax.Array


def init_cache(cfg: T5Config, batch: int, max_decode_len: int) -> dict[str, Any]:
    """An empty decoder self-attention cache for `max_decode_len` target positions.

    The encoder-side entries ('encoder_mask' [batch, src_len] and 'cross': per layer
    {'key', 'value'} [batch, heads, src_len, d_kv]) are added by the prefill `decode`, since
    their length is the input's. Every leaf has the batch as its leading axis.
    """
    kv = (batch, cfg.num_heads, max_decode_len, cfg.d_kv)  # Heads first: read in place.
    dtype = jnp.dtype(cfg.dtype)
    return {
        "index": jnp.zeros((batch,), jnp.int32),  # Next target position to write.
        "layers": tuple(
            {"key": jnp.zeros(kv, dtype), "value": jnp.zeros(kv, dtype)}
            for _ in range(cfg.num_decoder_layers)
        ),
    }


def decode_fns(model: T5, max_new_tokens: int) -> tuple[Callable, Callable]:
    """(prefill, step) for ptjax.decoding; the "prompt" is the encoder input and its mask.

    prefill encodes once, projects every layer's cross-attention keys/values into the cache and
    returns the logits after the decoder start token (0); step feeds one target token. A model
    with scan_layers=True decodes as its unscanned clone (the same function), its parameters
    unstacked (best once, by prepare_decode_params, rather than at every step).
    """
    model = scan.unscanned(model)
    cfg = model.config

    def split(params: Any) -> tuple[dict, Array | None]:
        params = scan.unstack_layers(params)
        head = params.get(_HEAD)
        return {"params": {k: v for k, v in params.items() if k != _HEAD}}, head

    def prefill(params: Any, inputs: Array, inputs_mask: Array) -> tuple[Array, dict]:
        variables, head = split(params)
        encoded = model.apply(variables, inputs, inputs_mask, method=T5.encode)
        batch = inputs.shape[0]
        # The start token takes slot 0 and each of the max_new_tokens steps one more.
        cache = init_cache(cfg, batch, max_new_tokens + 1)
        start = jnp.full((batch, 1), DECODER_START_ID, jnp.int32)
        logits, cache = model.apply(
            variables,
            encoded,
            start,
            inputs_mask,
            cache=cache,
            output_kernel=head,
            method=T5.decode,
        )
        return logits[:, 0], cache

    def step(params: Any, tokens: Array, cache: dict) -> tuple[Array, dict]:
        variables, head = split(params)
        logits, cache = model.apply(
            variables, None, tokens[:, None], cache=cache, output_kernel=head, method=T5.decode
        )
        return logits[:, 0], cache

    return prefill, step


_HEAD = "decode_output_kernel"


def prepare_decode_params(params: Any) -> Any:
    """The parameters as a decoding loop reads them best, made once before it: scanned layers
    unstacked, each decoder self-attention's query/key/value as one projection
    (`layers.fuse_qkv_for_decoding`), and a tied output embedding also transposed
    ([d_model, vocab]), as GPT's (each step's product then reads the table in its own layout)."""
    params = dict(scan.unstack_layers(params))
    decoder = dict(params["decoder"])
    for name, layer in decoder.items():
        if name.startswith("layer_") and "query" in layer["self_attention"]:
            attention = layers.fuse_qkv_for_decoding(layer["self_attention"])
            decoder[name] = {**layer, "self_attention": attention}
    params["decoder"] = decoder
    if "lm_head" in params or _HEAD in params:  # A separate head is [d_model, vocab] already.
        return params
    return {**params, _HEAD: params["shared"]["embedding"].T}
