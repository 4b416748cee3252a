"""Hugging Face interop: BERT, GPT-2 and T5 checkpoints and tokenizers in and out of ptjax.

`import_hf(hf_dir, out_workdir)` and `export_hf(workdir_or_checkpoint, out_dir)` convert whole
directories (convert.py); `load_hf(hf_dir)` gives the model and parameters in Python. One module
per family holds its config and tensor mapping in both directions (hf_bert.py, hf_gpt2.py,
hf_t5.py, on tensor_map.py); hf_weights.py reads and writes the files, hf_tokenizers.py puts
Hugging Face tokenizers behind ptjax's tokenizer interface.
"""

from ptjax.interop.convert import HFModel, export_hf, import_hf, load_hf
from ptjax.interop.tensor_map import ConversionError

__all__ = ["ConversionError", "HFModel", "export_hf", "import_hf", "load_hf"]
