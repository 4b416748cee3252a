"""Decoding: jit-compiled greedy, sampling and beam search over any model with a cache."""

from ptjax.decoding.search import DecodeConfig, beam_search, filter_logits, sample

__all__ = ["DecodeConfig", "beam_search", "filter_logits", "sample"]
