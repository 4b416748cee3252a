"""ptjax: pretraining and fine-tuning BERT-, GPT- and T5-style Transformers in JAX/Flax."""

import os

# TensorFlow serves tf.data only; keep its C++ start-up chatter out of logs unless asked for.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
