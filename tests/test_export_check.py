"""scripts/export_check.py: every family's train, eval and decode steps export for TPU and CUDA
from this CPU with the accelerators' forms, and the check finds CPU-only forms when forced."""

import json
import os
import re
import subprocess
import sys

import pytest
import xla_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = xla_env.xla_flags(devices=8)
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "export_check.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1]), done


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_every_step_exports_for_tpu_and_cuda_without_a_cpu_form():
    code, result, done = _run()
    assert code == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert result["exported"] == {
        platform: {family: "ok" for family in ("gpt", "bert", "t5", "llama")}
        for platform in ("tpu", "cuda")
    }
    assert result["failures"] == 0 and result["cpu_only_forms"] == 0
    for family in ("gpt", "t5", "llama"):  # Decoding loops too (BERT has none).
        assert f"tpu {family:>5}: ok; train, eval, decode exported" in done.stdout
    # TPU's auto attention is splash/flash: every train and eval step calls a Pallas kernel
    # (the script fails a module without one), T5's decoding loop too (its encoder).
    assert result["attention"]["tpu"] == "splash"
    assert result["tpu_kernel_calls"] >= 4 * (3 + 1) + 1, result
    assert "{'train': 9, 'eval': 3, 'decode': 1}" in done.stdout  # T5: self, cross, biased.


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_xla_attention_on_tpu_makes_no_kernel_call():
    code, result, _ = _run("--attention=xla", "--platforms=tpu", "--families=bert")
    assert code == 0 and result["tpu_kernel_calls"] == 0
    assert result["attention"] == {"tpu": "xla"}


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_cpu_forms_forced_onto_a_tpu_export_are_found():
    code, result, _ = _run("--kernels=cpu", "--platforms=tpu", "--families=gpt")
    assert code == 1 and result["cpu_only_forms"] > 0
    status = result["exported"]["tpu"]["gpt"]
    for form in ("add_bias", "matmul", "optimization_barrier", "ui16"):
        assert form in status, status


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
def test_the_lora_train_step_exports_with_optimizer_state_for_the_adapters_only():
    code, result, done = _run("--lora=4", "--families=llama,t5,bert")
    assert code == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert result["exported"] == {
        platform: {family: "ok" for family in ("llama", "t5", "bert")}
        for platform in ("tpu", "cuda")
    }
    assert result["cpu_only_forms"] == 0 and result["tpu_kernel_calls"] >= 3 + 9 + 3

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import export_check

    text = export_check.exported_modules("bert", "tpu", "auto", "splash", lora_rank=4)["train"]
    names = set(re.findall(r"\"((?:state|result\[0\])\.[^\"]*)\"", text))
    moments = [n for n in names if ".opt_state" in n and ("'kernel'" in n or "'lora_" in n)]
    assert moments and all("'lora_" in n for n in moments), sorted(moments)[:5]
    assert any(n.startswith("state.frozen") and "'query']['kernel']" in n for n in names)
