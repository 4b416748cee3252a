"""Evaluation metrics that are not a training loss: classification scores, SQuAD EM/F1."""
