"""A 2-layer, 128-wide GPT on the bundled World English Bible; the demo and test size.

    python scripts/train.py --config=configs/gpt_tiny.py --workdir=/tmp/gpt_tiny

1,200 steps of 8 x 128 tokens, eval and greedy samples every 200. Measured with
`bash scripts/demo.sh` on the 2-core VM (quiet, tuned environment): training from the first
log line to step 1200 took about 2m45s at ~10k tokens/s; validation perplexity 161 at step 200,
118 at 400, 101 at 600, 94 at 800, 88 at 1000, 86.6 at 1200 (accuracy 0.224).
"""

from ptjax.config_presets import gpt_config


def get_config(arg=None):
    del arg
    return gpt_config("tiny")
