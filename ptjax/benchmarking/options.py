"""What a benchmark run times: the Options (one field per flag of scripts/benchmark.py), the
models, modes and dtypes it knows, and the constants the sides share."""

from __future__ import annotations

import dataclasses

MODELS = ("gpt", "bert", "t5")
DEFAULT_SIZES = {"gpt": "bench", "bert": "mini", "t5": "bench"}  # 4 layers x 256 wide each.
WHATS = ("train", "generate")
MODES = ("pmap", "mesh")
DTYPES = ("float32", "bfloat16")

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
