"""scripts/benchmark.py at a tiny shape: both sides run, and the summary has the promised keys."""

import importlib.util
import json
import pathlib
import sys

import pytest

from ptjax import runtime

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def _script():
    spec = importlib.util.spec_from_file_location("ptjax_benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # For its dataclasses.
    spec.loader.exec_module(module)
    return module


def test_tiny_run_against_the_baseline_reports_the_json_keys():
    """Also the mesh wrapper on 4 host devices, bf16 compute (torch autocast) on both sides and
    ptjax running its steps two per call."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    bench = _script()
    opts = bench.Options(
        size="tiny",
        seq_len=16,
        per_device_batch_size=1,
        steps=2,
        rounds=2,
        warmup_steps=0,
        env_tuning="on",
        mode="mesh",
        fsdp=2,
        devices=4,
        dtype="bfloat16",
        steps_per_execution=2,
    )
    result = bench.run_benchmark(opts, log=lambda line: None)
    json.loads(json.dumps(result))  # One JSON object.
    for key in (
        "ptjax_tokens_per_second",
        "baseline_tokens_per_second",
        "speedup",
        "ptjax_step_seconds",
        "baseline_step_seconds",
        "ptjax_mfu",
        "baseline_mfu",
        "ptjax_peak_rss_mib",
        "baseline_peak_rss_mib",
        "ptjax_compile_seconds",
        "flops_per_token",
        "matmul_flops_per_second",
        "threads",
        "tuned_environment",
    ):
        assert key in result, key
    tuned = result["settings"]["on"]
    assert tuned["ptjax"]["parameters"] == tuned["hf"]["parameters"]  # The same model shape.
    assert result["devices"] == 4 and result["tokens_per_step"] == 4 * 16
    assert result["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
    assert result["dtype"] == "bfloat16" and "bfloat16" in bench.format_table(result)
    assert result["speedup"] > 0 and result["ptjax_peak_rss_mib"] > 0
    assert "speedup" in bench.format_table(result)
    assert "ptjax 2 steps per call" in bench.format_table(result)


def test_unknown_model_and_what_are_refused_by_name():
    bench = _script()
    with pytest.raises(ValueError, match="--model='xlnet'"):
        bench.Options(model="xlnet").check()
    with pytest.raises(ValueError, match="--what=generate"):
        bench.Options(model="bert", what="generate").check()
    with pytest.raises(ValueError, match="--what='score'"):
        bench.Options(what="score").check()
    with pytest.raises(ValueError, match="--max_new_tokens"):
        bench.Options(what="generate", max_new_tokens=0).check()
    with pytest.raises(ValueError, match="--mode='shard'"):
        bench.Options(mode="shard").check()
    with pytest.raises(ValueError, match="--dtype='float16'"):
        bench.Options(dtype="float16").check()
    with pytest.raises(ValueError, match="need --mode=mesh"):
        bench.Options(fsdp=2).check()
    with pytest.raises(ValueError, match="--what=train"):
        bench.Options(what="generate", mode="mesh").check()
    with pytest.raises(ValueError, match="multiple of --steps_per_execution=2"):
        bench.Options(steps=3, steps_per_execution=2).check()
    with pytest.raises(ValueError, match="--steps_per_execution"):
        bench.Options(what="generate", steps_per_execution=2, steps=2).check()


def test_generate_against_hf_generate_counts_new_tokens():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    bench = _script()
    opts = bench.Options(
        what="generate",
        size="tiny",
        per_device_batch_size=2,
        prompt_len=4,
        max_new_tokens=5,
        steps=1,
        rounds=2,
        warmup_steps=0,
        env_tuning="off",
    )
    result = bench.run_benchmark(opts, log=lambda line: None)
    json.loads(json.dumps(result))
    assert result["tokens_per_step"] == 2 * 5  # New tokens only, every row decoded in full.
    side = result["settings"]["off"]
    assert side["ptjax"]["parameters"] == side["hf"]["parameters"]
    assert side["ptjax"]["last_loss"] is None and result["speedup"] > 0
    assert "greedy decode" in bench.format_table(result)


def test_tuning_is_added_and_removed_keeping_the_users_settings(tmp_path):
    user = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "XLA_FLAGS": "--xla_foo=1", "A": "b"}
    tuned = runtime.process_environment(tuned=True, env=user)
    assert tuned["GLIBC_TUNABLES"].split(":")[0] == "glibc.malloc.arena_max=2"
    assert "glibc.malloc.hugetlb=1" in tuned["GLIBC_TUNABLES"]
    assert tuned["XLA_FLAGS"].split()[0] == "--xla_foo=1" and tuned["A"] == "b"
    assert runtime.process_environment(tuned=False, env=tuned) == user
    assert "GLIBC_TUNABLES" not in runtime.process_environment(
        tuned=False, env=dict(GLIBC_TUNABLES="glibc.malloc.hugetlb=1")
    )
    # Decoding keeps XLA's YNNPACK kernels (faster for per-token matmuls): glibc tuning only.
    decode = runtime.process_environment(tuned=True, env=user, workload="decode")
    assert decode["XLA_FLAGS"] == "--xla_foo=1" and "hugetlb=1" in decode["GLIBC_TUNABLES"]
    # So does bf16 training, whose float32-accumulating bf16 products are YNNPACK's.
    assert runtime.workload_for("train", "bfloat16") == "train_bf16"
    assert runtime.workload_for("train", "float32") == "train"
    assert runtime.workload_for("generate", "bfloat16") == "decode"
    bf16 = runtime.process_environment(tuned=True, env=user, workload="train_bf16")
    assert bf16 == decode
    # scripts/evaluate.py reads the run's dtype from its config.json, before JAX starts.
    (tmp_path / "config.json").write_text('{"model": {"dtype": "bfloat16"}}')
    assert runtime.run_workload(str(tmp_path)) == "train_bf16"
    assert runtime.run_workload(str(tmp_path / "missing")) == "train"
    # A setting the user made wins over ptjax's.
    mine = runtime.process_environment(tuned=True, env={"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert mine["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=0"


def test_bert_mlm_against_bert_for_masked_lm():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    bench = _script()
    opts = bench.Options(
        model="bert",
        size="tiny",
        seq_len=16,
        per_device_batch_size=1,
        steps=1,
        rounds=2,
        warmup_steps=0,
        env_tuning="off",
    )
    result = bench.run_benchmark(opts, log=lambda line: None)
    json.loads(json.dumps(result))
    side = result["settings"]["off"]
    assert side["hf"]["name"].startswith("HF BertForMaskedLM")
    # The same encoder and MLM head; ptjax's BERT also holds the pooler (d_model^2 + d_model)
    # that BertForMaskedLM leaves out.
    d_model = 128
    assert side["ptjax"]["parameters"] == side["hf"]["parameters"] + d_model * d_model + d_model
    assert result["size"] == "tiny" and result["speedup"] > 0
    for entry in side.values():
        if isinstance(entry, dict):
            assert 0 < entry["last_loss"] < 20  # Both sides train on the same MLM batches.


@pytest.mark.parametrize("what", ["train", "generate"])
def test_t5_against_t5_for_conditional_generation(what):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    bench = _script()
    opts = bench.Options(
        model="t5",
        what=what,
        size="tiny",
        seq_len=16,
        per_device_batch_size=2,
        prompt_len=8,
        max_new_tokens=4,
        steps=1,
        rounds=2,
        warmup_steps=0,
        env_tuning="off",
    )
    result = bench.run_benchmark(opts, log=lambda line: None)
    json.loads(json.dumps(result))
    side = result["settings"]["off"]
    assert side["ptjax"]["parameters"] == side["hf"]["parameters"]  # The same T5 1.0 shape.
    assert side["hf"]["name"].startswith("HF T5") and result["speedup"] > 0
    if what == "train":
        assert result["tokens_per_step"] == result["devices"] * 2 * 16  # Target tokens.
        for entry in side.values():
            if isinstance(entry, dict):
                assert 0 < entry["last_loss"] < 20  # Both sides train on the same batches.
    else:
        assert result["tokens_per_step"] == 2 * 4  # New tokens, every row decoded in full.
