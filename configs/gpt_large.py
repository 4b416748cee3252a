"""GPT-2 large: 774M parameters, context 1024.

Meant for an accelerator; point dataset.name at a TFDS catalogue corpus for real pretraining:

    python scripts/train.py --config=configs/gpt_large.py --workdir=gs://BUCKET/gpt_large \
        --config.dataset.name=c4/en:3.1.0 --config.dataset.data_dir=gs://BUCKET/tfds
"""

from ptjax.config_presets import gpt_config


def get_config(arg=None):
    del arg
    return gpt_config("large")
