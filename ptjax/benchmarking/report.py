"""The benchmark's summary: medians, rates, MFU and speedups from the workers' blocks (the JSON
line), and the table printed before it."""

from __future__ import annotations

from typing import Any

from ptjax import runtime
from ptjax.benchmarking.options import DEFAULT_SIZES, Options
from ptjax.benchmarking.timing import median


def summarise(
    opts: Options,
    settings: list[str],
    sides: list[str],
    infos: dict[tuple[str, str], dict],
    blocks: dict[tuple[str, str], list[dict]],
) -> dict[str, Any]:
    """The JSON line's object from each (setting, side)'s worker info and timed blocks; its
    headline figures are the tuned environment's when it was run."""
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
            tps = median(rates)
            entry[side] = {
                "tokens_per_second": tps,
                "tokens_per_second_per_round": rates,
                "step_seconds": median([b["step_seconds"] for b in runs]),
                "cpu_seconds_per_step": median([b["cpu_seconds_per_step"] for b in runs]),
                "page_faults_per_step": median([b["page_faults_per_step"] for b in runs]),
                "other_cpu_fraction": median([b["other_cpu_fraction"] for b in runs]),
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
            entry["speedup_paired_median"] = median([p / b for p, b in pairs])
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
