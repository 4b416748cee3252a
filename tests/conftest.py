"""Test set-up: 8 fake CPU devices, set before JAX is imported anywhere, and one persistent JAX
compilation cache for the whole session (its subprocesses too: the scripts and multi-process
tests compile the same tiny models again and again; about 20% off the suite's time)."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="ptjax-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

# Modules that train, resume or benchmark real runs (end to end, subprocesses, several
# processes): the slow tier. `pytest -m "not slow"` is the fast tier for development; the whole
# suite (scripts/test.sh, CI) runs both.
SLOW_MODULES = {
    "test_benchmark",
    "test_bert_e2e",
    "test_config_fuzz",
    "test_mesh_tasks",
    "test_multihost",
    "test_multihost_checkpoints",
    "test_reliability",
    "test_results",
    "test_scale",
    "test_scan",
    "test_t5_e2e",
    "test_train_e2e",
}


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        if item.module.__name__.rpartition(".")[2] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
