"""ptjax: pretraining and fine-tuning BERT-, GPT- and T5-style Transformers in JAX/Flax."""
