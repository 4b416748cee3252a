"""Fine-tunes a BERT for extractive question answering; by default on the bundled demo set.

    python scripts/train.py --config=configs/bert_qa.py:size=tiny \
        --config.init_checkpoint=/tmp/bert_tiny --workdir=/tmp/bert_qa

The demo set (`ptjax_qa_demo`) asks for the word that follows a key word in real Bible
passages. `:dataset=squad` trains on SQuAD v1.1 prepared with `tfds build squad` in
dataset.data_dir; `:dataset=qa_files` on your own JSONL (id, question, context, answers).
"""

from ptjax.config_presets import bert_qa_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, size="tiny", dataset="ptjax_qa_demo")
    return bert_qa_config(args.size, args.dataset)
