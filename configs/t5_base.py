"""Span-corruption pretraining of a T5-base on the bundled corpus (config_presets.t5_config).

python scripts/train.py --config=configs/t5_base.py --workdir=/tmp/t5_base
"""

from ptjax.config_presets import t5_config


def get_config(arg=None):
    del arg
    return t5_config("base")
