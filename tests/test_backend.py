"""One backend policy (ptjax.backend): the XLA:CPU-tuned forms only in steps on CPU devices, the
plain forms elsewhere, with the same losses and gradients; decided by the step's devices and
model.kernels, never by the host's default backend."""

import dataclasses
import re
import types

import jax
import ml_collections
import numpy as np
import pytest
import test_scale as ts

from ptjax import backend, runtime
from ptjax.train import parallel


def cpu_forms_in(jaxpr_text: str) -> set[str]:
    """The CPU-tuned forms a jaxpr holds: mixed_matmul's custom VJPs, ptjax.argmax's barrier (in
    the fused loss that keeps its logits: tests/test_losses.py checks its residuals) and the
    16-bit Threefry dropout mask."""
    found = set(re.findall(r"name=(add_bias|matmul)\b", jaxpr_text))
    if "optimization_barrier" in jaxpr_text:
        found.add("optimization_barrier")
    if "new_dtype=uint16" in jaxpr_text:
        found.add("uint16 threefry")
    return found


def _devices(*platforms):
    return [types.SimpleNamespace(platform=p, process_index=0) for p in platforms]


def test_auto_resolves_by_the_platform_of_the_step_devices():
    assert backend.resolve("auto", _devices("cpu", "cpu")) == backend.CPU
    assert backend.resolve("auto", _devices("gpu")) == backend.XLA
    assert backend.resolve("auto", _devices("tpu", "tpu")) == backend.XLA
    assert backend.resolve("xla", _devices("cpu")) == backend.XLA
    assert backend.resolve("cpu", _devices("tpu")) == backend.CPU
    with pytest.raises(ValueError, match="one platform"):
        backend.resolve("auto", _devices("cpu", "gpu"))
    with pytest.raises(ValueError, match="model.kernels='cuda'"):
        backend.resolve("cuda", _devices("gpu"))
    assert "plain XLA forms (model.kernels=auto on tpu devices)" in backend.describe(
        "auto", _devices("tpu")
    )


def test_parallel_takes_the_forms_of_its_devices():
    pmap = ml_collections.ConfigDict(dict(mode="pmap"))
    assert parallel.create(pmap, "auto").forms == backend.CPU
    assert parallel.create(pmap, "xla").forms == backend.XLA
    assert parallel.create(pmap).forms is None  # Not set: the default backend decides.


def test_forms_nest_and_fall_back_to_the_default_backend_outside_a_step():
    assert backend.cpu_forms() == (jax.default_backend() == "cpu")
    with backend.forms(backend.XLA):
        assert not backend.cpu_forms()
        with backend.forms(backend.CPU):
            assert backend.cpu_forms()
        assert not backend.cpu_forms()


@pytest.mark.slow  # Over 3 s on the 2-core VM: the whole suite, not the fast tier.
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_plain_forms_give_the_same_loss_and_gradients_without_a_cpu_form(family, dtype):
    """A train step's loss and gradients (dropout on) under the XLA forms: no CPU form in the
    jaxpr, and, dropout off, the CPU forms' loss and gradients."""
    cfg, module, task, batch, init_inputs = ts._family_case(family)
    cfg = dataclasses.replace(cfg, dtype=dtype)
    params = ts._fast_jit(module(cfg).init)(jax.random.PRNGKey(0), *init_inputs)["params"]

    def mean_loss(p, train):
        model = module(cfg if train else dataclasses.replace(cfg, dropout_rate=0.0))
        loss_sum, sums = task.loss(model, p, batch, rng=jax.random.PRNGKey(3), train=True)
        return loss_sum / sums["weight"]

    found, results = {}, {}
    for forms in (backend.CPU, backend.XLA):
        grad = backend.traced_with(forms, jax.value_and_grad(mean_loss))
        found[forms] = cpu_forms_in(str(jax.make_jaxpr(grad, static_argnums=1)(params, True)))
        results[forms] = jax.jit(grad, static_argnums=1)(params, False)
    assert found[backend.XLA] == set(), found
    expected = {"uint16 threefry"} | ({"add_bias"} if family != "t5" else set())
    if family != "bert":
        expected.add("optimization_barrier")
    if dtype == "bfloat16":
        expected.add("matmul")
    assert expected <= found[backend.CPU], found[backend.CPU]
    (loss_cpu, grads_cpu), (loss_xla, grads_xla) = results[backend.CPU], results[backend.XLA]
    rtol = 1e-5 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(float(loss_xla), float(loss_cpu), rtol=rtol)
    assert ts._cosine(grads_xla, grads_cpu) > (0.99999 if dtype == "float32" else 0.99)


def test_plain_dropout_drops_at_its_rate():
    from ptjax.models import layers

    with backend.forms(backend.XLA):
        keep, scale = layers.dropout_keep(jax.random.PRNGKey(0), 0.25, (200, 500))
    assert keep.dtype == bool and scale == pytest.approx(1 / 0.75)
    assert abs(float(np.mean(keep)) - 0.75) < 0.01


def test_the_process_is_tuned_only_for_a_cpu_run(tmp_path):
    assert not runtime.accelerator_platform({"JAX_PLATFORMS": "cpu"})
    assert runtime.accelerator_platform({"JAX_PLATFORMS": "cuda,cpu"})
    assert runtime.accelerator_platform({"JAX_PLATFORMS": "tpu"})
    none = [str(tmp_path / "nvidia[0-9]*")]
    assert not runtime.accelerator_platform({}, none)
    (tmp_path / "nvidia0").write_text("")
    assert runtime.accelerator_platform({}, none)
