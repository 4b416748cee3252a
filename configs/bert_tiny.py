"""Masked-LM pretraining of a BERT-tiny on the bundled corpus (ptjax.config_presets.bert_config).

python scripts/train.py --config=configs/bert_tiny.py --workdir=/tmp/bert_tiny
"""

from ptjax.config_presets import bert_config


def get_config(arg=None):
    del arg
    return bert_config("tiny")
