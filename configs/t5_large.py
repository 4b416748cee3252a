"""Span-corruption pretraining of a T5-large on the bundled corpus (config_presets.t5_config).

python scripts/train.py --config=configs/t5_large.py --workdir=/tmp/t5_large
"""

from ptjax.config_presets import t5_config


def get_config(arg=None):
    del arg
    return t5_config("large")
