"""T5, any size, task and data: --config=configs/t5.py:size=small,task=seq2seq,data=xsum.

    # Span-corruption pretraining on the bundled corpus, then en->es fine-tuning from it:
    python scripts/train.py --config=configs/t5.py:size=tiny --workdir=/tmp/t5_tiny
    python scripts/train.py --config=configs/t5.py:size=tiny,task=seq2seq \
        --config.init_checkpoint=/tmp/t5_tiny --workdir=/tmp/t5_en_es

Fine-tuning data (task=seq2seq): en_es (default; the bundled verse pairs, BLEU),
cnn_dailymail and xsum (summarization, ROUGE), squad (generative QA, EM/F1) — TFDS datasets a
user has prepared under --config.dataset.data_dir — and qa_demo (the bundled demo questions).

Sizes: tiny (tests), mini (the configs/t5_en_es.py recipe), small (60M), base (220M),
large (770M), and T5 1.1's v1_1_small, v1_1_base, v1_1_large (gated GELU, untied output layer).
"""

from ptjax.config_presets import parse_arg, t5_config


def get_config(arg=None):
    args = parse_arg(arg, size="tiny", task="span_corruption", data="en_es")
    return t5_config(args.size, args.task, args.data)
