"""Masked-LM pretraining of a BERT-small on the bundled corpus (ptjax.config_presets.bert_config).

python scripts/train.py --config=configs/bert_small.py --workdir=/tmp/bert_small
"""

from ptjax.config_presets import bert_config


def get_config(arg=None):
    del arg
    return bert_config("small")
