"""Decoding: jit-compiled greedy, sampling and beam search over any model with a cache."""

from ptjax.decoding.search import DecodeConfig, beam_search, filter_logits, sample

__all__ = ["DecodeConfig", "Generator", "beam_search", "filter_logits", "sample"]


def __getattr__(name: str):
    # Generator pulls in checkpoints and tokenizers; import it only when asked for.
    if name == "Generator":
        from ptjax.decoding.generator import Generator

        return Generator
    raise AttributeError(name)
