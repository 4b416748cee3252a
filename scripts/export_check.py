"""Proof that ptjax's steps lower for TPU and GPU, made on this machine's CPU.

    python scripts/export_check.py [--kernels=auto|cpu|xla] [--attention=auto|xla|splash|cudnn]
        [--platforms=tpu,cuda] [--families=gpt,bert,t5] [--lora=RANK]

Exports with `jax.export` (platforms=['tpu'] and ['cuda']) the bf16 train step on a (2, 2, 2)
mesh, the eval step and the greedy decoding loop of GPT, BERT (no decoding) and T5 at the tiny
size, each traced with the forms (ptjax.backend) and the attention kernel
(ptjax.models.attention) that the `auto` policy gives that platform, and reads the exported
modules: how many Pallas TPU kernel calls they make, and whether any holds a form meant for
XLA:CPU only (mixed_matmul's products and bias gradient, ptjax.argmax's barrier, the 16-bit
Threefry dropout bits). Attention dropout is 0 (model.attention_dropout_rate), as a run that
wants the kernels in training sets it. On TPU (splash) every train and eval step must call a
Pallas kernel, and T5's decoding loop too (its encoder); a module without one is a failure.
cuDNN's attention traces only where cuDNN is installed: on a machine without it `auto` gives
CUDA XLA's attention and says so in "attention". The last line printed is one JSON object:

    {"exported": {"tpu": {"gpt": "ok", ...}, "cuda": {...}}, "failures": 0,
     "tpu_kernel_calls": N, "cpu_only_forms": 0, "attention": {"tpu": "splash", ...}}

and the exit status is 1 if anything failed to export or holds a CPU-only form. `--lora=RANK`
exports the LoRA fine-tuning train step instead (finetune.lora: adapters of that rank in every
projection, adapter dropout 0.05, the model frozen).
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

PLATFORMS = ("tpu", "cuda")
FAMILIES = ("gpt", "bert", "t5", "llama")
MESH = (2, 2, 2)
# Names the CPU-only forms leave in an exported module's locations, and the bit width of the
# 16-bit Threefry mask.
CPU_ONLY = re.compile(
    r"\b(add_bias|matmul|matmul_t|over_leading|_cpu_fused)\b|optimization_barrier|ui16"
)


def family_config(family: str, lora_rank: int = 0):
    """The tiny `family` run, bf16, on the MESH, with a 512-piece vocabulary (no tokenizer);
    with `lora_rank`, its LoRA fine-tune."""
    from ptjax import config_presets

    if family == "gpt":
        config = config_presets.gpt_config("tiny")
    elif family == "llama":
        config = config_presets.llama_config("tiny")
    elif family == "bert":
        config = config_presets.bert_config("tiny")
    else:
        config = config_presets.t5_config("tiny")
    config.model.vocab_size = 512
    config.model.dtype = "bfloat16"
    config.seq_len = 64
    config.per_device_batch_size = 2
    config.parallelism.mode = "mesh"
    config.parallelism.data, config.parallelism.fsdp, config.parallelism.tensor = MESH
    config.model.attention_dropout_rate = 0.0
    if family == "t5":
        config.seq2seq.target_len = 32
    if lora_rank:
        config.finetune.lora.rank = lora_rank
        config.finetune.lora.targets = "query,key,value,out,wi,wi_0,wi_1,wo"
    return config


def exported_modules(
    family: str, platform: str, kernels: str = "auto", kernel: str = "xla", lora_rank: int = 0
) -> dict[str, str]:
    """{what: exported StableHLO text} of `family`'s steps for `platform`, with attention
    `kernel` (with `lora_rank`: the LoRA train step alone)."""
    import jax
    from jax import export

    from ptjax import backend, models
    from ptjax.decoding import search
    from ptjax.models import attention
    from ptjax.train import estimate, parallel, sharding, steps

    config = family_config(family, lora_rank)
    forms = backend.resolve_platform(kernels, platform)
    lowered = {}
    step, state, batch = estimate.train_step_args(config, forms=forms, attention_kernel=kernel)
    lowered["train"] = export.export(step, platforms=[platform])(state, batch)
    if lora_rank:
        return {what: exp.mlir_module() for what, exp in lowered.items()}

    model, _ = models.build(config)
    task = estimate.task_of(config)
    mesh = parallel.create(config.parallelism).mesh
    traced = attention.traced_with(
        parallel.attention_on(kernel, mesh), backend.traced_with(forms, steps.eval_step)
    )
    eval_step = parallel.mesh_eval_step(traced, mesh, model=model, task=task)
    lowered["eval"] = export.export(eval_step, platforms=[platform])(state.params, batch)

    family_fns = models.MODELS[config.model.family]
    if family_fns.decode_fns is not None:
        cfg = search.DecodeConfig(max_new_tokens=8, eos_id=1, pad_id=0)
        prefill, one_step = family_fns.decode_fns(model, cfg.max_new_tokens)

        def decode(params, tokens, mask, rng):
            return search.sample(prefill, one_step, params, tokens, mask, rng, cfg)

        params = jax.eval_shape(family_fns.decode_params, state.params)
        params = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            params,
            sharding.tree_shardings(params, mesh),
        )
        spec = jax.ShapeDtypeStruct
        args = (spec((4, 16), "int32"), spec((4, 16), "bool"), spec((2,), "uint32"))
        decode = attention.traced_with(attention.Choice(kernel, mesh), decode)
        decoder = jax.jit(backend.traced_with(forms, decode))
        lowered["decode"] = export.export(decoder, platforms=[platform])(params, *args)
    return {what: exp.mlir_module() for what, exp in lowered.items()}


def main(argv: list[str]) -> int:
    from ptjax import runtime

    with runtime.start_up():  # What exported_modules imports too, with the GC paused.
        import ptjax.train.estimate  # noqa: F401
        from ptjax.models import attention

    options = {
        "kernels": "auto",
        "attention": "auto",
        "platforms": ",".join(PLATFORMS),
        "families": ",".join(FAMILIES),
        "lora": "0",
    }
    for arg in argv:
        key, _, value = arg.removeprefix("--").partition("=")
        if key not in options or not value:
            sys.exit(f"Unknown argument {arg!r}; usage: see the docstring of {__file__}.")
        options[key] = value
    runtime.quiet_library_logs()
    platforms, families = options["platforms"].split(","), options["families"].split(",")
    exported: dict[str, dict[str, str]] = {p: {} for p in platforms}
    chosen: dict[str, str] = {}
    failures = kernel_calls = cpu_only = 0
    for platform in platforms:
        kernel, why = attention.resolve(options["attention"], platform)
        chosen[platform] = kernel if kernel != "xla" or "unusable" not in why else f"xla ({why})"
        print(f"{platform:>5}: attention {kernel} ({why})")
        for family in families:
            try:
                modules = exported_modules(
                    family, platform, options["kernels"], kernel, int(options["lora"])
                )
            except Exception as e:  # Reported, counted and the next one tried.
                traceback.print_exc()
                exported[platform][family] = f"failed: {type(e).__name__}: {e}"[:300]
                failures += 1
                continue
            found = {
                what: [m.group(0) for m in CPU_ONLY.finditer(text)]
                for what, text in modules.items()
            }
            per_module = {what: text.count("tpu_custom_call") for what, text in modules.items()}
            calls = sum(per_module.values())
            forms = sorted({hit for hits in found.values() for hit in hits})
            status = "ok" if not any(found.values()) else "cpu-only forms: " + ", ".join(forms)
            # Splash on TPU: every step calls the kernel; decoding only where it has no cache.
            must_call = [w for w in per_module if w != "decode" or family == "t5"]
            missing = [w for w in must_call if kernel == "splash" and not per_module[w]]
            if missing:
                status = f"no Pallas kernel call in {', '.join(missing)}"
                failures += 1
            exported[platform][family] = status
            kernel_calls += calls if platform == "tpu" else 0
            cpu_only += sum(len(hits) for hits in found.values())
            print(
                f"{platform:>5} {family:>5}: {status}; {', '.join(modules)} exported, "
                f"Pallas TPU kernel calls {per_module}"
            )
    print(
        json.dumps(
            {
                "exported": exported,
                "failures": failures,
                "tpu_kernel_calls": kernel_calls,
                "cpu_only_forms": cpu_only,
                "attention": chosen,
            }
        )
    )
    return 1 if failures or cpu_only else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
