"""ptjax's sides of the benchmark: its real train step and its jitted greedy decoding loop.

JAX and ptjax's model code are imported inside the functions, and nothing here imports
TensorFlow, so that the benchmark runs on an image with JAX alone (ptjax.train.state, not the
trainer)."""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

from ptjax.benchmarking.options import ACCELERATOR_MATMUL_SIZE, DEFAULT_SIZES, MATMUL_SIZE, Options
from ptjax.benchmarking.synthetic import MLM_PREDICTED_FRACTION, SYNTHETIC_ROWS, synthetic_prompts


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


class PtjaxSide:
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


def _decode_flops_per_token(family: Any, model_config: Any, opts: Options) -> float:
    """Forward FLOPs per new token: a third of the train step's at the mean context length (T5:
    per target token of an example with prompt_len inputs and max_new_tokens targets)."""
    if opts.model == "t5":
        from ptjax.models import t5

        return t5.flops_per_token(model_config, opts.prompt_len, opts.max_new_tokens) / 3
    return family.flops_per_token(model_config, opts.prompt_len + opts.max_new_tokens // 2) / 3


class PtjaxGenerateSide:
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
            synthetic_prompts(opts, rows, model_config.vocab_size, opts.seed + k) for k in range(4)
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

    matmul_flops = PtjaxSide.matmul_flops
