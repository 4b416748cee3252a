"""The baseline's sides: Hugging Face Transformers models of ptjax's shape in PyTorch, trained
with ptjax's AdamW or decoding with `generate`.

torch and transformers are optional extras: they are imported inside the functions, so that
the package imports without them (as with --baseline=none)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ptjax.benchmarking.options import MATMUL_SIZE, Options
from ptjax.benchmarking.synthetic import (
    synthetic_mlm_rows,
    synthetic_prompts,
    synthetic_rows,
    synthetic_seq2seq_rows,
)

# The baseline of each family: transformers' class of the same shape, its config.json written
# by ptjax.interop (the one place that maps ptjax's hyper-parameters to Hugging Face's).
HF_ARCHITECTURES = {
    "gpt": "GPT2LMHeadModel",
    "bert": "BertForMaskedLM",
    "t5": "T5ForConditionalGeneration",
}


def _hf_model(opts: Options, cfg: dict[str, Any]) -> Any:
    """transformers' model of ptjax's hyper-parameters `cfg` (the worker's model config)."""
    import transformers

    from ptjax import models
    from ptjax.interop import hf_bert, hf_gpt2, hf_t5

    ours = models.MODELS[opts.model].config_class(**cfg)
    arch = HF_ARCHITECTURES[opts.model]
    if opts.model == "gpt":
        config_json = hf_gpt2.hf_config(ours, arch, eos_id=0)
    elif opts.model == "bert":
        config_json = hf_bert.hf_config(ours, arch)
    else:
        config_json = hf_t5.hf_config(ours, arch)
    model_class = getattr(transformers, arch)
    config = model_class.config_class.from_dict(config_json, attn_implementation=opts.hf_attention)
    return model_class(config)


def _torch_adamw(model: Any, opt: dict[str, Any], is_embedding: Callable[[str], bool]) -> Any:
    """ptjax's optimizer in torch: AdamW with no decay on biases, norms or embeddings."""
    import torch

    decay, plain = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and not is_embedding(name) else plain).append(p)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": opt["weight_decay"]},
            {"params": plain, "weight_decay": 0.0},
        ],
        lr=opt["learning_rate"],
        betas=(opt["b1"], opt["b2"]),
        eps=opt["eps"],
    )


def _hf_train_setup(side: Any, opts: Options, threads: int, setup: dict[str, Any], embedding):
    """What every HF train side starts with: threads, seed, the model in train mode, ptjax's
    AdamW (`embedding(name)`: no decay) and clipping. Returns ptjax's model config (a dict)."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(opts.seed)
    cfg, opt = setup["model_config"], setup["optimizer"]  # ptjax's, from its worker.
    side.model = _hf_model(opts, cfg)
    side.model.train()
    side.optimizer = _torch_adamw(side.model, opt, embedding)
    side.clip = opt["grad_clip_norm"]
    side.torch = torch
    _set_precision(side, opts)
    return cfg


def _set_precision(side: Any, opts: Options) -> None:
    """--dtype on the torch side: bfloat16 is torch's CPU autocast (matmuls in bf16, parameters,
    optimizer and loss float32), the counterpart of ptjax's model.dtype with float32 params."""
    import torch

    side.dtype = getattr(torch, opts.dtype)
    side.autocast = lambda: torch.autocast(
        "cpu", dtype=torch.bfloat16, enabled=opts.dtype == "bfloat16"
    )


class HFSide:
    """transformers' GPT2LMHeadModel of the same shape, torch.optim.AdamW, dropout on."""

    def __init__(self, opts: Options, threads: int, setup: dict[str, Any]):
        import torch
        import transformers

        embedding = lambda name: name.endswith(("wte.weight", "wpe.weight"))
        cfg = _hf_train_setup(self, opts, threads, setup, embedding)
        self.vocab_size = cfg["vocab_size"]
        self.batches = []
        for k in range(4):
            rows_k = synthetic_rows(opts, setup["rows"], self.vocab_size, opts.seed + k)
            self.batches.append(
                (
                    torch.from_numpy(rows_k["inputs"].astype("int64")),
                    torch.from_numpy(rows_k["targets"].astype("int64")),
                )
            )
        self.info = {
            "name": f"HF GPT2LMHeadModel ({opts.hf_attention})",
            "rows": setup["rows"],
            "parameters": int(sum(p.numel() for p in self.model.parameters())),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(),
        }

    def step(self, i: int) -> None:
        torch = self.torch
        inputs, targets = self.batches[i % len(self.batches)]
        with self.autocast():
            logits = self.model(input_ids=inputs).logits  # [batch, length, vocab]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, self.vocab_size).float(), targets.reshape(-1)
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss = loss

    def finish(self) -> None:
        loss = float(self.loss.item())
        if loss != loss:
            raise FloatingPointError(f"The baseline's loss is {loss}.")
        self.last_loss = loss

    def matmul_flops(self, tries: int) -> float:
        torch = self.torch
        n = MATMUL_SIZE
        a, b = torch.randn(n, n, dtype=self.dtype), torch.randn(n, n, dtype=self.dtype)
        a @ b
        best = float("inf")
        for _ in range(tries):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        return 2 * n**3 / best


class HFBertSide:
    """transformers' BertForMaskedLM of the same shape, torch.optim.AdamW, dropout on."""

    def __init__(self, opts: Options, threads: int, setup: dict[str, Any]):
        import numpy
        import torch
        import transformers

        cfg = _hf_train_setup(self, opts, threads, setup, lambda name: "embeddings" in name)
        self.batches = []
        for k in range(4):
            rows_k = synthetic_mlm_rows(opts, setup["rows"], cfg["vocab_size"], opts.seed + k)
            labels = numpy.where(rows_k["weights"] > 0, rows_k["targets"], -100)  # HF's ignore id
            self.batches.append(
                {
                    "input_ids": torch.from_numpy(rows_k["input_ids"].astype("int64")),
                    "token_type_ids": torch.from_numpy(rows_k["token_type_ids"].astype("int64")),
                    "attention_mask": torch.from_numpy(rows_k["attention_mask"].astype("int64")),
                    "labels": torch.from_numpy(labels.astype("int64")),
                }
            )
        self.info = {
            "name": f"HF BertForMaskedLM ({opts.hf_attention})",
            "rows": setup["rows"],
            "parameters": int(sum(p.numel() for p in self.model.parameters())),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(),
        }

    def step(self, i: int) -> None:
        with self.autocast():
            loss = self.model(**self.batches[i % len(self.batches)]).loss
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss = loss

    finish = HFSide.finish
    matmul_flops = HFSide.matmul_flops


class HFGenerateSide:
    """transformers' `generate` of the same model (GPT-2, or T5 from its encoder inputs):
    greedy, use_cache=True, every new token forced (no stop on EOS)."""

    def __init__(self, opts: Options, threads: int, setup: dict[str, Any]):
        import torch
        import transformers

        torch.set_num_threads(threads)
        torch.manual_seed(opts.seed)
        cfg = setup["model_config"]
        self.model = _hf_model(opts, cfg).eval()
        _set_precision(self, opts)
        config = self.model.config
        pad_id = config.eos_token_id if opts.model == "gpt" else config.pad_token_id
        self.generation = transformers.GenerationConfig(
            max_new_tokens=opts.max_new_tokens,
            min_new_tokens=opts.max_new_tokens,  # As ptjax's side: no early stop on EOS.
            do_sample=False,
            num_beams=1,
            use_cache=True,
            eos_token_id=config.eos_token_id,
            pad_token_id=pad_id,
            decoder_start_token_id=getattr(config, "decoder_start_token_id", None),
        )
        # A decoder-only output holds the prompt; T5's starts with the decoder start token.
        self.skip = opts.prompt_len if opts.model == "gpt" else 1
        self.torch = torch
        self.prompts = [
            torch.from_numpy(
                synthetic_prompts(opts, setup["rows"], cfg["vocab_size"], opts.seed + k)
            )
            for k in range(4)
        ]
        self.mask = torch.ones_like(self.prompts[0])
        self.max_new_tokens = opts.max_new_tokens
        self.info = {
            "name": f"HF {'GPT2' if opts.model == 'gpt' else 'T5'} generate ({opts.hf_attention})",
            "rows": setup["rows"],
            "parameters": int(sum(p.numel() for p in self.model.parameters())),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(),
        }

    def step(self, i: int) -> None:
        prompt = self.prompts[i % len(self.prompts)]
        with self.torch.inference_mode(), self.autocast():
            out = self.model.generate(
                input_ids=prompt, attention_mask=self.mask, generation_config=self.generation
            )
        self.new_tokens = (out.shape[1] - self.skip) * out.shape[0]

    def finish(self) -> None:
        expected = self.info["rows"] * self.max_new_tokens
        if self.new_tokens != expected:
            raise RuntimeError(f"The baseline generated {self.new_tokens} tokens, not {expected}.")
        self.last_loss = None  # Decoding has no loss.

    matmul_flops = HFSide.matmul_flops


class HFT5Side:
    """transformers' T5ForConditionalGeneration of the same shape, torch.optim.AdamW, dropout on."""

    def __init__(self, opts: Options, threads: int, setup: dict[str, Any]):
        import torch
        import transformers

        cfg = _hf_train_setup(self, opts, threads, setup, lambda name: "shared" in name)
        self.batches = []
        for k in range(4):
            rows_k = synthetic_seq2seq_rows(opts, setup["rows"], cfg["vocab_size"], opts.seed + k)
            self.batches.append(
                {
                    "input_ids": torch.from_numpy(rows_k["encoder_input_tokens"].astype("int64")),
                    "attention_mask": torch.ones(rows_k["encoder_input_tokens"].shape, dtype=int),
                    "labels": torch.from_numpy(rows_k["decoder_target_tokens"].astype("int64")),
                }
            )
        self.info = {
            "name": f"HF T5ForConditionalGen. ({opts.hf_attention})",
            "rows": setup["rows"],
            "parameters": int(sum(p.numel() for p in self.model.parameters())),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(),
        }

    step = HFBertSide.step
    finish = HFSide.finish
    matmul_flops = HFSide.matmul_flops
