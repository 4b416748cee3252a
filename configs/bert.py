"""BERT masked-LM pretraining, any size: --config=configs/bert.py:size=mini.

python scripts/train.py --config=configs/bert.py:size=tiny --workdir=/tmp/bert
"""

from ptjax.config_presets import bert_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, size="tiny")
    return bert_config(args.size)
