"""Times ptjax against Hugging Face Transformers in PyTorch, in turns, in one run.

    python scripts/benchmark.py --model=gpt     # train step: 'bench' GPT, 8 x 256 tokens, ~4 min
    python scripts/benchmark.py --model=gpt --what=generate   # 8 prompts x 32, 128 new, greedy
    python scripts/benchmark.py --model=bert    # MLM train step vs BertForMaskedLM
    python scripts/benchmark.py --model=t5 --seq_len=128      # vs T5ForConditionalGeneration
    python scripts/benchmark.py --model=t5 --what=generate    # encoder-decoder greedy decoding
    python scripts/benchmark.py --devices=8 --mode=mesh --fsdp=2 --tensor=2 --baseline=none
    python scripts/benchmark.py --dtype=bfloat16   # bf16 compute, float32 parameters, both sides

T5 train steps take rows of --seq_len input and --seq_len target tokens (one example per row,
no padding); their rates count target tokens, each carrying its share of the encoder, as
`ptjax.models.t5.flops_per_token` does. T5 decoding encodes --prompt_len input tokens per row and
decodes --max_new_tokens; its rate is new tokens/s.

--what=train times the full train step (forward, backward, AdamW); --what=generate one greedy
decode of --per_device_batch_size prompts of --prompt_len tokens with --max_new_tokens new ones,
KV cache on both sides (ptjax.decoding vs `GPT2LMHeadModel.generate(use_cache=True)`), both
forced to produce every new token (no stop on EOS); its rate is new tokens/s.

Each side runs in its own worker process (so peak memory is per side), pinned to the same
--threads CPUs, on the same synthetic token batches. The parent times them in turns -- a block of
--steps steps of ptjax, then of the baseline, for --rounds rounds, the order reversed every other
round -- and reports medians; compilation and warm-up steps are timed apart. With
--env_tuning=both, both sides run once in the environment as given and once in ptjax's tuned one
(`ptjax.runtime.process_environment`), all four workers in the same turns. The last line of
output is one JSON object; its headline figures are for the tuned environment when it was run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from absl import app, flags

from ptjax import runtime

MODELS = ("gpt", "bert", "t5")
DEFAULT_SIZES = {"gpt": "bench", "bert": "mini", "t5": "bench"}  # 4 layers x 256 wide each.
WHATS = ("train", "generate")
MODES = ("pmap", "mesh")
DTYPES = ("float32", "bfloat16")

FLAGS = flags.FLAGS

# The machine's matmul rate (--dtype) is measured on [n, n] @ [n, n]: 2048 on a CPU; a GPU or
# TPU needs a larger product to reach its rate.
MATMUL_SIZE = 2048
ACCELERATOR_MATMUL_SIZE = 8192
# Untimed steps at the start of every block. A worker that sat idle while the other side ran is
# slow for a step or two (on this VM the first step after 5 s idle costs 1.5x, on both sides),
# which a trainer running steadily never pays.
REWARM_STEPS = 1


@dataclasses.dataclass(frozen=True)
class Options:
    """What to time and how; the flags of the same names."""

    model: str = "gpt"
    what: str = "train"
    size: str = ""  # '': DEFAULT_SIZES[model].
    per_device_batch_size: int = 8
    seq_len: int = 256
    prompt_len: int = 32
    max_new_tokens: int = 128
    steps: int = 3
    rounds: int = 6
    warmup_steps: int = 2
    threads: int = 0
    baseline: str = "hf"
    hf_attention: str = "eager"
    env_tuning: str = "both"
    seed: int = 0
    mode: str = "pmap"  # ptjax's parallel wrapper: config key parallelism.mode.
    fsdp: int = 1  # Mesh axes (mode mesh); data takes the devices left.
    tensor: int = 1
    devices: int = 0  # ptjax's CPU devices (0: as the process has them; N: N fake devices).
    dtype: str = "float32"  # Compute dtype of both sides (parameters stay float32).
    steps_per_execution: int = 1  # ptjax's train steps per call: config key of that name.
    attention: str = "auto"  # ptjax's attention kernel: config key model.attention.
    attention_dropout: float = -1.0  # config key model.attention_dropout_rate (-1: dropout's).

    def check(self) -> None:
        """Raises ValueError naming the flag that cannot work."""
        if self.model not in MODELS:
            raise ValueError(
                f"--model={self.model!r} is not benchmarked; known: {', '.join(MODELS)}."
            )
        if self.what == "generate" and self.model == "bert":
            raise ValueError("--what=generate times GPT or T5 decoding; BERT does not generate.")
        if self.what not in WHATS:
            raise ValueError(f"--what={self.what!r} is not benchmarked; known: {', '.join(WHATS)}.")
        for name in ("per_device_batch_size", "seq_len", "prompt_len", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("steps", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}.")
        if self.warmup_steps < 0 or self.threads < 0 or self.devices < 0:
            raise ValueError("--warmup_steps, --threads and --devices must not be negative.")
        if self.mode not in MODES:
            raise ValueError(f"--mode={self.mode!r} is not a parallel mode; known: {MODES}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype={self.dtype!r} is not benchmarked; known: {DTYPES}.")
        if self.fsdp < 1 or self.tensor < 1:
            raise ValueError("--fsdp and --tensor must be at least 1.")
        k = self.steps_per_execution
        if k < 1 or (k > 1 and self.what != "train"):
            raise ValueError("--steps_per_execution must be at least 1, and 1 unless --what=train.")
        if self.steps % k:
            raise ValueError(
                f"--steps={self.steps} must be a multiple of --steps_per_execution={k} (ptjax "
                "runs that many steps per call)."
            )
        if self.mode == "pmap" and (self.fsdp, self.tensor) != (1, 1):
            raise ValueError("--fsdp and --tensor are mesh axes: they need --mode=mesh.")
        if self.what == "generate" and (self.mode, self.devices) != ("pmap", 0):
            raise ValueError(
                "--what=generate times one decoding loop on one device; --mode and --devices "
                "are for --what=train."
            )


# ---------------------------------------------------------------------------------------------
# Workers: one side each, driven over stdin/stdout with one JSON object per line.


def _pin_threads(threads: int) -> list[int]:
    """Restricts this process to its first `threads` allowed CPUs (XLA sizes its pool by them)."""
    cpus = sorted(os.sched_getaffinity(0))
    if threads:
        cpus = cpus[:threads]
        os.sched_setaffinity(0, cpus)
    return cpus


def _synthetic_rows(opts: Options, rows: int, vocab_size: int, seed: int) -> dict[str, Any]:
    """Packed rows like the LM pipeline's: [rows, seq_len] inputs, targets, segments, positions."""
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab_size, (rows, opts.seq_len + 1), dtype=np.int32)
    segment_ids = np.zeros((rows, opts.seq_len), np.int32)
    positions = np.zeros((rows, opts.seq_len), np.int32)
    for row in range(rows):
        start, segment = 0, 1
        while start < opts.seq_len:  # Documents of 16 tokens up to a whole row.
            length = int(rng.integers(16, opts.seq_len + 1))
            end = min(start + length, opts.seq_len)
            segment_ids[row, start:end] = segment
            positions[row, start:end] = np.arange(end - start)
            start, segment = end, segment + 1
    return dict(
        inputs=tokens[:, :-1],
        targets=tokens[:, 1:],
        segment_ids=segment_ids,
        positions=positions,
        weights=np.ones((rows, opts.seq_len), np.float32),
    )


MLM_PREDICTED_FRACTION = 0.15  # Share of tokens masked (and predicted) in BERT batches.


def _synthetic_mlm_rows(opts: Options, rows: int, vocab_size: int, seed: int) -> dict[str, Any]:
    """Masked-LM rows like the encoder pipeline's: [CLS] tokens [SEP], 15% selected, 80% of
    those [MASK]ed; the rest of the vocabulary above the special ids (pad 0 ... [MASK] 6)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    length = opts.seq_len
    targets = rng.integers(7, vocab_size, (rows, length), dtype=np.int32)
    targets[:, 0], targets[:, -1] = 4, 5  # [CLS], [SEP]
    weights = np.zeros((rows, length), np.float32)
    selected = round(MLM_PREDICTED_FRACTION * (length - 2))
    for row in range(rows):
        weights[row, 1 + rng.choice(length - 2, selected, replace=False)] = 1.0
    masked = (weights > 0) & (rng.random((rows, length)) < 0.8)
    return dict(
        input_ids=np.where(masked, 6, targets).astype(np.int32),
        targets=targets,
        weights=weights,
        token_type_ids=np.zeros((rows, length), np.int32),
        attention_mask=np.ones((rows, length), np.int32),
    )


def _synthetic_seq2seq_rows(opts: Options, rows: int, vocab_size: int, seed: int) -> dict[str, Any]:
    """T5 rows like the seq2seq pipeline's, one full-length example per row: inputs and targets
    of seq_len tokens above pad 0 / eos 1, decoder inputs the targets shifted right."""
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (rows, opts.seq_len)
    inputs = rng.integers(2, vocab_size, shape, dtype=np.int32)
    targets = rng.integers(2, vocab_size, shape, dtype=np.int32)
    ones = np.ones(shape, np.int32)
    positions = np.broadcast_to(np.arange(opts.seq_len, dtype=np.int32), shape).copy()
    return dict(
        encoder_input_tokens=inputs,
        encoder_segment_ids=ones,
        encoder_positions=positions,
        decoder_input_tokens=np.concatenate([np.zeros((rows, 1), np.int32), targets[:, :-1]], 1),
        decoder_target_tokens=targets,
        decoder_segment_ids=ones,
        decoder_positions=positions,
        decoder_loss_weights=np.ones(shape, np.float32),
    )


SYNTHETIC_ROWS = {
    "gpt": _synthetic_rows,
    "bert": _synthetic_mlm_rows,
    "t5": _synthetic_seq2seq_rows,
}


def _usage() -> tuple[float, float, int]:
    """(wall seconds, process CPU seconds, minor page faults so far)."""
    import resource

    times = os.times()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    return time.perf_counter(), times.user + times.system, faults


def _machine_busy() -> float:
    """CPU seconds all processes have used since boot (Linux /proc/stat; NaN elsewhere)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    busy = ticks[0] + ticks[1] + ticks[2] + sum(ticks[5:8])  # user nice system irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def _block(
    step: Callable[[int], None],
    finish: Callable[[], None],
    steps: int,
    first: int,
    per_call: int = 1,
):
    """Runs `steps` steps (`per_call` steps per call of `step`) and `finish()`; returns per-step
    wall, CPU seconds and page faults.

    `other_cpu_fraction` is the share of the CPUs that other processes used meanwhile: on a
    shared machine, blocks where it is large are slower for reasons of their own.
    """
    wall0, cpu0, faults0 = _usage()
    busy0 = _machine_busy()
    for i in range(0, steps, per_call):
        step(first + i)
    finish()
    wall1, cpu1, faults1 = _usage()
    others = (_machine_busy() - busy0 - (cpu1 - cpu0)) / ((wall1 - wall0) * os.cpu_count())
    return {
        "step_seconds": (wall1 - wall0) / steps,
        "cpu_seconds_per_step": (cpu1 - cpu0) / steps,
        "page_faults_per_step": (faults1 - faults0) / steps,
        "other_cpu_fraction": max(others, 0.0),
    }


def _ptjax_model(opts: Options) -> tuple[Any, ...]:
    """(config, model, model config, family, params, state rng) as trainer.init_state makes them."""
    import jax

    from ptjax import config_presets, models
    from ptjax import run as run_lib
    from ptjax.train.state import init_params  # Not trainer's: no TensorFlow on this path.

    size = opts.size or DEFAULT_SIZES[opts.model]
    if opts.model == "gpt":
        config = config_presets.gpt_config(size)
    elif opts.model == "bert":
        config = config_presets.bert_config(size)
    else:
        config = config_presets.t5_config(size, "seq2seq")
        config.seq2seq.target_len = 0  # Targets of seq_len tokens too.
    config.seq_len = opts.seq_len
    config.per_device_batch_size = opts.per_device_batch_size
    config.seed = opts.seed
    config.model.dtype = opts.dtype
    config.parallelism.mode = opts.mode
    config.parallelism.fsdp = opts.fsdp
    config.parallelism.tensor = opts.tensor
    config.model.attention = opts.attention
    config.model.attention_dropout_rate = opts.attention_dropout
    run_lib.validate(config)
    model, model_config = models.build(config)
    family = models.MODELS[config.model.family]
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    params = jax.jit(functools.partial(init_params, config, model))(init_rng)
    return config, model, model_config, family, params, state_rng


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


class _PtjaxSide:
    """ptjax's real train step: steps.train_step under the run's parallel wrapper (pmap, or jit
    on a mesh), placed and called as the trainer does, `steps_per_call` steps per call
    (--steps_per_execution)."""

    def __init__(self, opts: Options):
        import jax
        import numpy as np

        from ptjax import tasks
        from ptjax.train import optim, parallel, steps
        from ptjax.train.state import TrainState

        config, model, model_config, family, params, state_rng = _ptjax_model(opts)
        self.devices = jax.local_device_count()
        rows = self.devices * opts.per_device_batch_size
        tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps, params)
        state = TrainState.create(params, tx, state_rng)
        par = parallel.create(config.parallelism, config.model.kernels, config.model.attention)
        self.state = par.place(state)
        task, _ = tasks.create(config, data_dir="")  # The trainer's task, set up for the config.
        self.p_step = par.train_steps(
            steps.train_step,
            jax.eval_shape(lambda: state),
            model=model,
            task=task,
            tx=tx,
            schedule=schedule,
        )
        self.dtype = opts.dtype
        make_rows = SYNTHETIC_ROWS[opts.model]
        batches = []
        for k in range(4):
            rows_k = make_rows(opts, rows, model_config.vocab_size, opts.seed + k)
            shape = (self.devices, opts.per_device_batch_size, opts.seq_len)
            batches.append({key: v.reshape(shape) for key, v in rows_k.items()})
        # What one call takes, as the trainer stacks them: [devices, k, per_device, length].
        self.steps_per_call = k = opts.steps_per_execution
        self.batches = [
            parallel.stack_batches([batches[(c * k + j) % 4] for j in range(k)]) for c in range(4)
        ]
        self.history: list[Any] = []
        if opts.model == "bert":  # MLM's model FLOPs: the vocabulary projection where masked.
            flops = family.flops_per_token(model_config, opts.seq_len, MLM_PREDICTED_FRACTION)
        else:  # T5: per target token, inputs and targets of seq_len tokens.
            flops = family.flops_per_token(model_config, opts.seq_len)
        self.info = {
            "name": f"ptjax {config.model.family}/{config.model.size}",
            "devices": self.devices,
            "rows": rows,
            "parameters": int(sum(np.size(x) for x in jax.tree.leaves(params))),
            "flops_per_token": float(flops),
            "model_config": dataclasses.asdict(model_config),
            "optimizer": config.optimizer.to_dict(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "mode": opts.mode,
            "mesh": None if par.mesh is None else dict(par.mesh.shape),
            "steps_per_execution": k,
        }

    def step(self, i: int) -> None:
        # The trainer's loop body: host batches in, the metrics kept on the devices.
        call = i // self.steps_per_call
        self.state, metrics = self.p_step(self.state, self.batches[call % len(self.batches)])
        self.history.append(metrics)

    def finish(self) -> None:
        """One device-to-host transfer per block, as the trainer's once per log interval."""
        import jax
        import numpy as np

        if not self.history:
            return
        host = jax.device_get(self.history)
        self.history = []
        loss = float(np.asarray(host[-1]["loss"]).reshape(-1)[-1])  # [devices, k]: the last.
        if not np.isfinite(loss):
            raise FloatingPointError(f"ptjax's loss is {loss}.")
        self.last_loss = loss

    def matmul_flops(self, tries: int) -> float:
        """The best FLOP/s of a jitted [n, n] @ [n, n] in --dtype over `tries` tries: bf16
        operands accumulate in float32, as ptjax's own bf16 products do (models.mixed_matmul)."""
        import jax
        import jax.numpy as jnp

        if not hasattr(self, "matmul"):
            n = MATMUL_SIZE if jax.default_backend() == "cpu" else ACCELERATOR_MATMUL_SIZE
            dtype = jnp.dtype(self.dtype)
            self.matmul_size = n
            a = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
            b = jax.random.normal(jax.random.PRNGKey(2), (n, n), dtype)
            accumulate = jnp.float32 if dtype == jnp.bfloat16 else None
            product = functools.partial(jnp.matmul, preferred_element_type=accumulate)
            self.matmul = functools.partial(jax.jit(product), a, b)
            self.matmul().block_until_ready()
        best = float("inf")
        for _ in range(tries):
            start = time.perf_counter()
            self.matmul().block_until_ready()
            best = min(best, time.perf_counter() - start)
        return 2 * self.matmul_size**3 / best


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


class _HFSide:
    """transformers' GPT2LMHeadModel of the same shape, torch.optim.AdamW, dropout on."""

    def __init__(self, opts: Options, threads: int, setup: dict[str, Any]):
        import torch
        import transformers

        embedding = lambda name: name.endswith(("wte.weight", "wpe.weight"))
        cfg = _hf_train_setup(self, opts, threads, setup, embedding)
        self.vocab_size = cfg["vocab_size"]
        self.batches = []
        for k in range(4):
            rows_k = _synthetic_rows(opts, setup["rows"], self.vocab_size, opts.seed + k)
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


class _HFBertSide:
    """transformers' BertForMaskedLM of the same shape, torch.optim.AdamW, dropout on."""

    def __init__(self, opts: Options, threads: int, setup: dict[str, Any]):
        import numpy
        import torch
        import transformers

        cfg = _hf_train_setup(self, opts, threads, setup, lambda name: "embeddings" in name)
        self.batches = []
        for k in range(4):
            rows_k = _synthetic_mlm_rows(opts, setup["rows"], cfg["vocab_size"], opts.seed + k)
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

    finish = _HFSide.finish
    matmul_flops = _HFSide.matmul_flops


def _prompts(opts: Options, rows: int, vocab_size: int, seed: int) -> Any:
    """[rows, prompt_len] random token ids (no padding: every prompt is full length)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(3, vocab_size, (rows, opts.prompt_len), dtype=np.int32)


def _decode_flops_per_token(family: Any, model_config: Any, opts: Options) -> float:
    """Forward FLOPs per new token: a third of the train step's at the mean context length (T5:
    per target token of an example with prompt_len inputs and max_new_tokens targets)."""
    if opts.model == "t5":
        from ptjax.models import t5

        return t5.flops_per_token(model_config, opts.prompt_len, opts.max_new_tokens) / 3
    return family.flops_per_token(model_config, opts.prompt_len + opts.max_new_tokens // 2) / 3


class _PtjaxGenerateSide:
    """ptjax.decoding's greedy loop with the GPT KV cache, jitted as Generator runs it."""

    def __init__(self, opts: Options):
        import jax
        import numpy as np

        from ptjax.decoding.search import DecodeConfig, sample

        if opts.prompt_len + opts.max_new_tokens > opts.seq_len:
            opts = dataclasses.replace(opts, seq_len=opts.prompt_len + opts.max_new_tokens)
        config, model, model_config, family, params, _ = _ptjax_model(opts)
        # eos_id -1 never matches: every row decodes all max_new_tokens, as the baseline.
        cfg = DecodeConfig(max_new_tokens=opts.max_new_tokens, eos_id=-1, pad_id=0)
        prefill, step = family.decode_fns(model, cfg.max_new_tokens)

        def run(params, tokens, mask):
            return sample(prefill, step, params, tokens, mask, jax.random.PRNGKey(0), cfg)

        self.run = jax.jit(run)
        # Prepared once for decoding (the output embedding transposed, q/k/v fused), as
        # Generator does when it places the parameters: a model-loading cost, not a decode's.
        self.params = jax.jit(family.decode_params)(params)
        self.dtype = opts.dtype
        rows = opts.per_device_batch_size
        self.prompts = [
            _prompts(opts, rows, model_config.vocab_size, opts.seed + k) for k in range(4)
        ]
        self.mask = np.ones((rows, opts.prompt_len), bool)
        self.new_tokens = 0
        self.info = {
            "name": f"ptjax {config.model.family}/{config.model.size} decode",
            "devices": 1,
            "rows": rows,
            "parameters": int(sum(np.size(x) for x in jax.tree.leaves(params))),
            "flops_per_token": float(_decode_flops_per_token(family, model_config, opts)),
            "model_config": dataclasses.asdict(model_config),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
        }

    def step(self, i: int) -> None:
        import numpy as np

        tokens, lengths = self.run(self.params, self.prompts[i % len(self.prompts)], self.mask)
        self.tokens = np.asarray(tokens)  # On the host, as Generator returns them.
        self.new_tokens = int(np.asarray(lengths).sum())

    def finish(self) -> None:
        expected = self.info["rows"] * self.tokens.shape[1]
        if self.new_tokens != expected:
            raise RuntimeError(f"ptjax decoded {self.new_tokens} new tokens, not {expected}.")
        self.last_loss = None  # Decoding has no loss.

    matmul_flops = _PtjaxSide.matmul_flops


class _HFGenerateSide:
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
            torch.from_numpy(_prompts(opts, setup["rows"], cfg["vocab_size"], opts.seed + k))
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

    matmul_flops = _HFSide.matmul_flops


class _HFT5Side:
    """transformers' T5ForConditionalGeneration of the same shape, torch.optim.AdamW, dropout on."""

    def __init__(self, opts: Options, threads: int, setup: dict[str, Any]):
        import torch
        import transformers

        cfg = _hf_train_setup(self, opts, threads, setup, lambda name: "shared" in name)
        self.batches = []
        for k in range(4):
            rows_k = _synthetic_seq2seq_rows(opts, setup["rows"], cfg["vocab_size"], opts.seed + k)
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

    step = _HFBertSide.step
    finish = _HFSide.finish
    matmul_flops = _HFSide.matmul_flops


SIDES = {
    ("train", "ptjax"): _PtjaxSide,
    ("train", "hf"): _HFSide,
    ("train", "hf-bert"): _HFBertSide,
    ("train", "hf-t5"): _HFT5Side,
    ("generate", "ptjax"): _PtjaxGenerateSide,
    ("generate", "hf"): _HFGenerateSide,
    ("generate", "hf-t5"): _HFGenerateSide,
}


def _peak_device_mib(side_name: str) -> float | None:
    """ptjax's peak accelerator memory (the first device's allocator); None on a CPU."""
    if side_name != "ptjax":
        return None
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None or jax.default_backend() == "cpu" else peak / 2**20


def _serve(side_name: str, opts: Options) -> None:
    """The worker's loop: build, compile and warm up the side, then run blocks on request."""
    import resource

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # Library prints go to stderr; stdout carries only the protocol.

    def send(message: dict) -> None:
        proto.write(json.dumps(message) + "\n")

    cpus = _pin_threads(opts.threads)
    try:
        baseline = side_name
        if side_name == "hf" and opts.model != "gpt":
            baseline = f"hf-{opts.model}"
        side_class = SIDES[(opts.what, baseline)]
        if side_name == "ptjax":
            side = side_class(opts)
        else:
            side = side_class(opts, len(cpus), json.loads(sys.stdin.readline()))
        per_call = getattr(side, "steps_per_call", 1)  # ptjax: --steps_per_execution.
        start = time.perf_counter()
        side.step(0)
        side.finish()
        first = time.perf_counter() - start
        start = time.perf_counter()
        warmup_calls = -(-opts.warmup_steps // per_call)  # At least --warmup_steps steps.
        for i in range(warmup_calls):
            side.step(per_call * (1 + i))
        side.finish()
        warmup = time.perf_counter() - start
        info = dict(side.info, cpus=len(cpus), first_step_seconds=first, warmup_seconds=warmup)
        info["matmul_flops_per_second"] = side.matmul_flops(tries=6)
        info["matmul_size"] = getattr(side, "matmul_size", MATMUL_SIZE)
        send(info)
        done = per_call * (1 + warmup_calls)
        for line in sys.stdin:
            request = json.loads(line)
            if request["op"] == "exit":
                break
            for _ in range(REWARM_STEPS):
                side.step(done)
                done += per_call
            side.finish()
            result = _block(side.step, side.finish, request["steps"], done, per_call)
            done += request["steps"]
            # Measured again after every block: the machine's rate is the best seen in the run.
            result["matmul_flops_per_second"] = side.matmul_flops(tries=2)
            send(dict(result, loss=side.last_loss))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.
        send({"peak_rss_mib": peak, "peak_device_mib": _peak_device_mib(side_name)})
    except Exception as e:  # Reported by the parent with the worker's stderr.
        send({"error": f"{type(e).__name__}: {e}"})
        raise


# ---------------------------------------------------------------------------------------------
# The parent: starts the workers, takes turns, summarises.


class _Worker:
    """A worker process of one side in one environment."""

    def __init__(self, side: str, setting: str, opts: Options, env: dict[str, str]):
        self.side, self.setting = side, setting
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 -- closed in close().
        args = [sys.executable, os.path.abspath(__file__), f"--worker={side}"]
        args.append(f"--worker_options={json.dumps(dataclasses.asdict(opts))}")
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env
        )

    def send(self, message: dict) -> None:
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict:
        line = self.proc.stdout.readline()
        message = json.loads(line) if line.strip() else {"error": "the worker exited"}
        if "error" in message:
            self.proc.wait()
            self.log.seek(0)
            tail = self.log.read()[-3000:]
            raise RuntimeError(
                f"{self.side} worker ({self.setting} environment): {message['error']}\n{tail}"
            )
        return message

    def request(self, message: dict) -> dict:
        self.send(message)
        return self.receive()

    def close(self) -> dict:
        self.send({"op": "exit"})
        message = self.receive()
        self.proc.wait()
        self.log.close()
        return message


def _environment(setting: str, threads: int, workload: str = "train") -> dict[str, str]:
    """The workers' environment: as given ('off') or tuned ('on'); the same threads either way."""
    env = runtime.process_environment(tuned=setting == "on", workload=workload)
    env[runtime.NO_TUNING_VAR] = "1"  # The workers never re-execute themselves.
    env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def run_benchmark(opts: Options, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the workers in turns and returns the summary (what the JSON line holds)."""
    opts.check()
    threads = opts.threads or len(os.sched_getaffinity(0))
    opts = dataclasses.replace(opts, threads=threads)
    settings = {"both": ["off", "on"], "on": ["on"], "off": ["off"]}[opts.env_tuning]
    sides = ["ptjax"] + (["hf"] if opts.baseline == "hf" else [])
    workers: dict[tuple[str, str], _Worker] = {}
    infos: dict[tuple[str, str], dict] = {}
    blocks: dict[tuple[str, str], list[dict]] = {}
    try:
        # Started one at a time, so that compile and warm-up times are not shared.
        for setting in settings:
            workload = runtime.workload_for(opts.what, opts.dtype)
            env = _environment(setting, threads, workload)
            for side in sides:
                key = (setting, side)
                log(f"starting {side} worker ({setting} environment tuning)")
                side_env = dict(env)
                if side == "ptjax" and opts.devices:  # N host devices: pmap/mesh over them.
                    name = "--xla_force_host_platform_device_count"
                    given = [f for f in env.get("XLA_FLAGS", "").split() if f.split("=")[0] != name]
                    side_env["XLA_FLAGS"] = " ".join([*given, f"{name}={opts.devices}"])
                workers[key] = _Worker(side, setting, opts, side_env)
                if side == "hf":
                    ptjax_info = infos[(setting, "ptjax")]
                    setup = {k: ptjax_info.get(k) for k in ("rows", "model_config", "optimizer")}
                    workers[key].send(setup)
                infos[key] = workers[key].receive()
                blocks[key] = []
        order = list(workers)
        for r in range(opts.rounds):
            for key in order if r % 2 == 0 else order[::-1]:
                time.sleep(0.2)  # Lets the other side's idle threads stop spinning.
                result = workers[key].request({"op": "run", "steps": opts.steps})
                blocks[key].append(result)
            log(f"round {r + 1}/{opts.rounds} done")
        for key, worker in list(workers.items()):
            infos[key].update(worker.close())
            del workers[key]
    finally:
        for worker in workers.values():
            worker.proc.kill()
    return _summarise(opts, settings, sides, infos, blocks)


def _summarise(opts, settings, sides, infos, blocks) -> dict[str, Any]:
    ptjax_info = infos[(settings[0], "ptjax")]
    # Tokens per timed step: a train step's rows x length, or a decode's new tokens.
    tokens = ptjax_info["rows"] * (opts.seq_len if opts.what == "train" else opts.max_new_tokens)
    flops_per_token = ptjax_info["flops_per_token"]
    # The machine's rate: the best JAX fp32 matmul seen in any environment at any time of the
    # run (after start-up and after every block), the same denominator for both sides.
    peak = max(
        max(
            [infos[(s, "ptjax")]["matmul_flops_per_second"]]
            + [b["matmul_flops_per_second"] for b in blocks[(s, "ptjax")]]
        )
        for s in settings
    )
    result: dict[str, Any] = {
        "model": opts.model,
        "what": opts.what,
        "size": opts.size or DEFAULT_SIZES[opts.model],
        "devices": ptjax_info["devices"],
        "mode": opts.mode,
        "mesh": ptjax_info.get("mesh"),
        "dtype": opts.dtype,
        "steps_per_execution": opts.steps_per_execution,
        "per_device_batch_size": opts.per_device_batch_size,
        "seq_len": opts.seq_len,
        "prompt_len": opts.prompt_len if opts.what == "generate" else None,
        "max_new_tokens": opts.max_new_tokens if opts.what == "generate" else None,
        "tokens_per_step": tokens,
        "threads": opts.threads,
        "rounds": opts.rounds,
        "steps_per_round": opts.steps,
        "flops_per_token": flops_per_token,
        "matmul_flops_per_second": peak,
        "matmul_size": ptjax_info["matmul_size"],
        "baseline": opts.baseline if opts.baseline == "none" else f"hf-{opts.hf_attention}",
        "tuned_environment": {
            "GLIBC_TUNABLES": ":".join(f"{n}={v}" for n, v in runtime.TUNED_GLIBC_TUNABLES),
            "XLA_FLAGS": " ".join(runtime.TUNED_XLA_FLAGS)
            if runtime.workload_for(opts.what, opts.dtype) == "train"
            else "",
        },
        "settings": {},
    }
    for setting in settings:
        entry: dict[str, Any] = {}
        for side in sides:
            info, runs = infos[(setting, side)], blocks[(setting, side)]
            rates = [tokens / b["step_seconds"] for b in runs]
            tps = _median(rates)
            entry[side] = {
                "tokens_per_second": tps,
                "tokens_per_second_per_round": rates,
                "step_seconds": _median([b["step_seconds"] for b in runs]),
                "cpu_seconds_per_step": _median([b["cpu_seconds_per_step"] for b in runs]),
                "page_faults_per_step": _median([b["page_faults_per_step"] for b in runs]),
                "other_cpu_fraction": _median([b["other_cpu_fraction"] for b in runs]),
                "mfu": tps * flops_per_token / peak,
                "peak_rss_mib": info["peak_rss_mib"],
                "peak_device_mib": info.get("peak_device_mib"),
                "first_step_seconds": info["first_step_seconds"],
                "warmup_seconds": info["warmup_seconds"],
                "parameters": info["parameters"],
                "matmul_flops_per_second": max(
                    [info["matmul_flops_per_second"]] + [b["matmul_flops_per_second"] for b in runs]
                ),
                "last_loss": runs[-1]["loss"],
                "name": info["name"],
            }
        if "hf" in entry:
            ours, theirs = entry["ptjax"], entry["hf"]
            rounds = ours["tokens_per_second_per_round"], theirs["tokens_per_second_per_round"]
            pairs = zip(*rounds, strict=True)
            entry["speedup"] = ours["tokens_per_second"] / theirs["tokens_per_second"]
            entry["speedup_paired_median"] = _median([p / b for p, b in pairs])
        result["settings"][setting] = entry
    result["other_cpu_fraction"] = max(
        e[side]["other_cpu_fraction"] for e in result["settings"].values() for side in sides
    )
    head = result["settings"]["on" if "on" in settings else "off"]
    result["headline_environment"] = "tuned" if "on" in settings else "as given"
    result["ptjax_tokens_per_second"] = head["ptjax"]["tokens_per_second"]
    result["ptjax_step_seconds"] = head["ptjax"]["step_seconds"]
    result["ptjax_mfu"] = head["ptjax"]["mfu"]
    result["ptjax_peak_rss_mib"] = head["ptjax"]["peak_rss_mib"]
    result["ptjax_peak_device_mib"] = head["ptjax"]["peak_device_mib"]  # None on a CPU.
    result["ptjax_compile_seconds"] = head["ptjax"]["first_step_seconds"]
    has_baseline = "hf" in head
    result["baseline_tokens_per_second"] = head["hf"]["tokens_per_second"] if has_baseline else None
    result["baseline_step_seconds"] = head["hf"]["step_seconds"] if has_baseline else None
    result["baseline_mfu"] = head["hf"]["mfu"] if has_baseline else None
    result["baseline_peak_rss_mib"] = head["hf"]["peak_rss_mib"] if has_baseline else None
    result["speedup"] = head["speedup"] if has_baseline else None
    if has_baseline and len(settings) == 2:
        on, off = result["settings"]["on"], result["settings"]["off"]
        result["speedup_untuned"] = off["speedup"]
        # What each user gets by default: ptjax's scripts tune themselves, a torch script not.
        result["speedup_tuned_ptjax_vs_untuned_baseline"] = (
            on["ptjax"]["tokens_per_second"] / off["hf"]["tokens_per_second"]
        )
    return result


def format_table(result: dict[str, Any]) -> str:
    """The human-readable summary printed before the JSON line."""
    if result["what"] == "train":
        mesh = result.get("mesh")
        where = "pmap" if not mesh else "mesh " + " ".join(f"{k}={v}" for k, v in mesh.items())
        shape = (
            f"train step ({where}, {result['dtype']}), {result['devices']} device(s) x "
            f"{result['per_device_batch_size']} x {result['seq_len']} tokens"
        )
        if result.get("steps_per_execution", 1) > 1:
            shape += f", ptjax {result['steps_per_execution']} steps per call"
    else:
        shape = (
            f"greedy decode with KV cache, {result['per_device_batch_size']} prompts x "
            f"{result['prompt_len']} tokens + {result['max_new_tokens']} new (rates: new tokens/s; "
            "'1st step s' includes jit compile)"
        )
    lines = [
        f"{result['model']}/{result['size']} {shape}, {result['threads']} "
        f"threads per side, {result['rounds']} rounds x {result['steps_per_round']} steps; "
        f"{result['flops_per_token'] / 1e6:.1f} MFLOP/token; matmul rate "
        f"{result['matmul_flops_per_second'] / 1e9:.0f} GFLOP/s (JAX {result['dtype']} "
        f"{result['matmul_size']}^3, best)",
        f"{'environment':<12}{'side':<28}{'tokens/s':>10}{'step ms':>9}{'CPU s/step':>11}"
        f"{'MFU':>7}{'faults/step':>12}{'peak RSS MiB':>13}{'1st step s':>11}{'others':>8}",
    ]
    names = {"off": "as given", "on": "tuned"}
    for setting, entry in result["settings"].items():
        for side in ("ptjax", "hf"):
            if side not in entry:
                continue
            e = entry[side]
            lines.append(
                f"{names[setting]:<12}{e['name'][:27]:<28}{e['tokens_per_second']:>10.0f}"
                f"{e['step_seconds'] * 1e3:>9.0f}{e['cpu_seconds_per_step']:>11.2f}"
                f"{e['mfu']:>7.1%}{e['page_faults_per_step']:>12.0f}{e['peak_rss_mib']:>13.0f}"
                f"{e['first_step_seconds']:>11.1f}{e['other_cpu_fraction']:>8.0%}"
            )
        if "speedup" in entry:
            lines.append(
                f"{'':<12}speedup ptjax / baseline: {entry['speedup']:.2f}x "
                f"(median of per-round ratios {entry['speedup_paired_median']:.2f}x)"
            )
    tuned = result["tuned_environment"]
    lines.append(f"tuned: GLIBC_TUNABLES={tuned['GLIBC_TUNABLES']} XLA_FLAGS={tuned['XLA_FLAGS']}")
    lines.append("others: share of the CPUs other processes used during the timed blocks (median)")
    if result["other_cpu_fraction"] > 0.1:
        lines.append(
            f"WARNING: other processes used {result['other_cpu_fraction']:.0%} of the CPUs; "
            "these figures measure a shared machine."
        )
    return "\n".join(lines)


def define_flags() -> None:
    """The command line; defined only when run as a script, so that tests can import it."""
    flags.DEFINE_enum(
        "model",
        "gpt",
        list(MODELS),
        "gpt: vs GPT2LMHeadModel; bert (MLM): BertForMaskedLM; t5: T5ForConditionalGeneration.",
    )
    flags.DEFINE_enum(
        "what",
        "train",
        list(WHATS),
        "train: forward, backward, AdamW update; generate: greedy decoding with the KV cache.",
    )
    flags.DEFINE_string(
        "size", "", "ptjax size name of --model's SIZES ('': gpt 'bench', bert 'mini')."
    )
    flags.DEFINE_integer(
        "per_device_batch_size", 8, "Rows per device (the baseline gets them all)."
    )
    flags.DEFINE_integer("seq_len", 256, "Tokens per row (--what=train).")
    flags.DEFINE_integer("prompt_len", 32, "Prompt tokens per row (--what=generate).")
    flags.DEFINE_integer("max_new_tokens", 128, "New tokens per row (--what=generate).")
    flags.DEFINE_integer("steps", 3, "Timed steps per block.")
    flags.DEFINE_integer("rounds", 6, "Blocks per side; the sides take turns.")
    flags.DEFINE_integer("warmup_steps", 2, "Untimed steps after the first (compiling) one.")
    flags.DEFINE_integer("threads", 0, "CPUs for each side (0: all this process may use).")
    flags.DEFINE_enum(
        "baseline", "hf", ["hf", "none"], "hf: transformers' model of the same shape."
    )
    flags.DEFINE_enum("hf_attention", "eager", ["eager", "sdpa"], "The baseline's attention.")
    flags.DEFINE_enum("env_tuning", "both", ["both", "on", "off"], "Process environment(s) to run.")
    flags.DEFINE_integer("seed", 0, "Seed of parameters, batches and dropout.")
    flags.DEFINE_enum(
        "mode", "pmap", list(MODES), "ptjax's parallel wrapper (config key parallelism.mode)."
    )
    flags.DEFINE_integer("fsdp", 1, "--mode=mesh: the fsdp axis (data takes the rest).")
    flags.DEFINE_integer("tensor", 1, "--mode=mesh: the tensor axis.")
    flags.DEFINE_integer(
        "devices", 0, "ptjax's CPU devices: 0 as the process has them, N: N fake host devices."
    )
    flags.DEFINE_enum(
        "dtype",
        "float32",
        list(DTYPES),
        "Compute dtype, parameters float32: ptjax's model.dtype, torch's CPU autocast.",
    )
    flags.DEFINE_integer(
        "steps_per_execution",
        1,
        "ptjax's train steps per call (config key steps_per_execution); divides --steps.",
    )
    flags.DEFINE_enum(
        "attention",
        "auto",
        ["auto", "xla", "splash", "cudnn"],
        "ptjax's attention kernel (config key model.attention).",
    )
    flags.DEFINE_float(
        "attention_dropout",
        -1.0,
        "ptjax's attention-probability dropout (model.attention_dropout_rate; -1: the model's "
        "dropout). Fused kernels serve training steps only at 0.",
    )
    flags.DEFINE_string("worker", None, "Internal: run as the worker of one side.")
    flags.DEFINE_string("worker_options", None, "Internal: the worker's options as JSON.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.worker:
        _serve(FLAGS.worker, Options(**json.loads(FLAGS.worker_options)))
        return
    opts = Options(
        model=FLAGS.model,
        what=FLAGS.what,
        size=FLAGS.size,
        per_device_batch_size=FLAGS.per_device_batch_size,
        seq_len=FLAGS.seq_len,
        prompt_len=FLAGS.prompt_len,
        max_new_tokens=FLAGS.max_new_tokens,
        steps=FLAGS.steps,
        rounds=FLAGS.rounds,
        warmup_steps=FLAGS.warmup_steps,
        threads=FLAGS.threads,
        baseline=FLAGS.baseline,
        hf_attention=FLAGS.hf_attention,
        env_tuning=FLAGS.env_tuning,
        seed=FLAGS.seed,
        mode=FLAGS.mode,
        fsdp=FLAGS.fsdp,
        tensor=FLAGS.tensor,
        devices=FLAGS.devices,
        dtype=FLAGS.dtype,
        steps_per_execution=FLAGS.steps_per_execution,
        attention=FLAGS.attention,
        attention_dropout=FLAGS.attention_dropout,
    )
    try:
        opts.check()
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    result = run_benchmark(opts, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_table(result))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
