"""A 2-layer, 128-wide Llama-style decoder (4 query heads sharing 2 key/value heads, RoPE,
RMSNorm, SwiGLU, tied output) on the bundled World English Bible; GPT tiny's recipe.

    python scripts/train.py --config=configs/llama_tiny.py --workdir=/tmp/llama_tiny
"""

from ptjax.config_presets import llama_config


def get_config(arg=None):
    del arg
    return llama_config("tiny")
