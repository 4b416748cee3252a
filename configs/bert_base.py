"""Masked-LM pretraining of a BERT-base on the bundled corpus (ptjax.config_presets.bert_config).

python scripts/train.py --config=configs/bert_base.py --workdir=/tmp/bert_base
"""

from ptjax.config_presets import bert_config


def get_config(arg=None):
    del arg
    return bert_config("base")
