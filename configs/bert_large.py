"""Masked-LM pretraining of a BERT-large on the bundled corpus (ptjax.config_presets.bert_config).

python scripts/train.py --config=configs/bert_large.py --workdir=/tmp/bert_large
"""

from ptjax.config_presets import bert_config


def get_config(arg=None):
    del arg
    return bert_config("large")
