"""The benchmark of ptjax against Hugging Face Transformers in PyTorch (scripts/benchmark.py):
one module per side, the worker processes that run them in turns, and the report."""
