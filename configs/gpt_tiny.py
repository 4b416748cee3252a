"""A 2-layer, 128-wide GPT on the bundled World English Bible; the demo and test size.

    python scripts/train.py --config=configs/gpt_tiny.py --workdir=/tmp/gpt_tiny

1,200 steps of 8 x 128 tokens, eval and greedy samples every 200. Measured on 2 CPU cores
(shared): the earlier 400-step version took 2m17s including install and reached validation
perplexity 128 (from ~8000, the vocabulary size, at the start).
"""

from ptjax.config_presets import gpt_config


def get_config(arg=None):
    del arg
    return gpt_config("tiny")
