"""GPT pretraining on the bundled corpus, any size: --config=configs/gpt.py:size=small.

python scripts/train.py --config=configs/gpt.py:size=tiny --workdir=/tmp/gpt
"""

from ptjax.config_presets import gpt_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, size="tiny")
    return gpt_config(args.size)
