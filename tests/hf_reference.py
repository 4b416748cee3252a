"""Shared by the Hugging Face interop tests: tiny random reference models built offline."""

import torch


def perturb(model, seed: int = 0):
    """Random values everywhere (HF inits norms to 1/0 and biases to 0), eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()
