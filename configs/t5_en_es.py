"""The en->es translation recipe: a 3-layer T5 trained on the bundled verse pairs on a CPU.

    python scripts/train.py --config=configs/t5_en_es.py --workdir=/tmp/t5_en_es
    python scripts/evaluate.py --workdir=/tmp/t5_en_es --split=test

A new 8000-piece sentencepiece model is trained on both sides of the training pairs; the model
(T5 1.0 layout, size 'mini': d_model 128, 3 + 3 layers) starts from random weights, or from a
span-corruption run with --config.init_checkpoint=WORKDIR (whose tokenizer then comes along).
Eval decodes the whole validation split greedily and reports sacrebleu's corpus BLEU.
"""

from ptjax.config_presets import t5_config


def get_config():
    c = t5_config("mini", "seq2seq")
    c.tokenizer.vocab_size = 8000
    c.seq_len = 128
    c.per_device_batch_size = 16
    c.total_steps = 2000
    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = 200
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.best_metric = "bleu"
    return c
