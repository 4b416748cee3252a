"""Shared by the Hugging Face interop tests: tiny random reference models built offline."""

import torch


def perturb(model, seed: int = 0):
    """Random values everywhere (HF inits norms to 1/0 and biases to 0), eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def tiny_bert_config(vocab_size: int, **kw):
    """A 2-layer, 64-wide BERT config with eager attention (the reference for parity)."""
    import transformers

    return transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        attn_implementation="eager",
        **kw,
    )


def padded(vocab: int, seed: int = 0, batch: int = 3, length: int = 12):
    """(ids, mask) [batch, length]: random ids, rows 1 and 2 right-padded with 0."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, (batch, length))
    mask = np.ones((batch, length), np.int64)
    mask[1, length - 5 :] = 0
    mask[2, length - 2 :] = 0
    return ids * mask, mask
