"""ptjax: pretraining and fine-tuning BERT-, GPT- and T5-style Transformers in JAX/Flax."""

import os

# TensorFlow serves tf.data only; keep its C++ start-up chatter out of logs unless asked for.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The inference APIs, imported on first use so that `import ptjax` stays light.
_LAZY = {
    "Generator": "ptjax.decoding.generator",
    "TextClassifier": "ptjax.text_classifier",
    "QuestionAnswerer": "ptjax.question_answerer",
    "TextEmbedder": "ptjax.text_embedder",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ptjax' has no attribute {name!r}")
