"""Data side of ptjax: tokenizer, corpora (TFDS builders), LM objectives and tf.data pipelines.

Modules are imported directly (`from ptjax.data import lm_pipeline`); importing this package
does not import TensorFlow.
"""
