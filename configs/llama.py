"""Llama-style decoder pretraining on the bundled corpus, any size:
--config=configs/llama.py:size=135m (sizes: tiny, 135m, 360m, 1b; ptjax.models.llama).

python scripts/train.py --config=configs/llama.py:size=tiny --workdir=/tmp/llama
"""

from ptjax.config_presets import llama_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, size="tiny")
    return llama_config(args.size)
