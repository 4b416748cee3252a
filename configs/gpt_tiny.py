"""A 2-layer, 128-wide GPT on the bundled World English Bible; the demo and test size.

    python scripts/train.py --config=configs/gpt_tiny.py --workdir=/tmp/gpt_tiny

On 2 CPU cores: 400 steps of 8 x 128 tokens take about TODO minutes; validation perplexity
falls from about 8000 (vocab size) to about TODO.
"""

from ptjax.config_presets import gpt_config


def get_config(arg=None):
    del arg
    return gpt_config("tiny")
