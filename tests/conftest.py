"""Test set-up: 8 fake CPU devices and the suite's compile flags (tests/xla_env.py), set before
JAX is imported anywhere; one persistent JAX compilation cache for the whole session (its
subprocesses too: the scripts and multi-process tests compile the same tiny models again and
again; about 20% off the suite's time); the GPT end-to-end corpus and tokenizer, made once per
session (per worker under pytest-xdist); the tiers; and the order modules start in."""

import atexit
import os
import shutil
import tempfile

import pytest
import xla_env

os.environ["XLA_FLAGS"] = xla_env.xla_flags(base=os.environ.get("XLA_FLAGS", ""), devices=8)
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
    "test_lora_finetune",
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


# The modules that take longest (2026-12-03, `pytest -n 2 --durations=0`), started first so
# that under pytest-xdist (`-n 2 --dist loadfile`, scripts/test.sh) the workers finish
# together rather than one waiting on a long module started last.
FIRST_MODULES = (
    "test_multihost",
    "test_reliability",
    "test_multihost_checkpoints",
    "test_bert_e2e",
    "test_train_e2e",
    "test_benchmark",
)


@pytest.hookimpl(hookwrapper=True)
def pytest_collection(session):
    """Test modules import TensorFlow, JAX, torch and transformers: with the GC paused, and
    frozen afterwards, as ptjax's entry points start (runtime.start_up)."""
    from ptjax import runtime

    with runtime.start_up():
        yield


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rpartition(".")[2] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)

    def rank(item):
        name = item.module.__name__.rpartition(".")[2]
        return FIRST_MODULES.index(name) if name in FIRST_MODULES else len(FIRST_MODULES)

    items.sort(key=rank)  # Stable: tests keep their order within a module.


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A TFDS data_dir for the session's end-to-end runs (modules may override it)."""
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory, data_dir):
    """A small sentencepiece model of the bundled corpus, the GPT runs' (the trainer's path)."""
    from ptjax.config_presets import gpt_config
    from ptjax.data import corpora
    from ptjax.data.tokenizer import train_tokenizer

    config = gpt_config("tiny")
    path = str(tmp_path_factory.mktemp("spm") / "spm.model")
    texts = corpora.iterate_texts(config.dataset, "train", data_dir=data_dir, max_texts=2000)
    train_tokenizer(texts, path, vocab_size=512)
    return path
