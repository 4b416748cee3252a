"""Every config file loads and builds its model; bad keys and values name themselves."""

import glob
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from ml_collections import config_flags

from ptjax import config as config_lib
from ptjax import models
from ptjax import run as run_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def _load(path, arg=None):
    """Loads a config file the way scripts/train.py's --config flag does."""
    module = config_flags.config_flags._LoadConfigModule("cfg", path)
    return module.get_config(arg) if arg else module.get_config()


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_config_file_loads_validates_and_builds(path):
    config = _load(path)
    run_lib.validate(config)
    # A classification head takes its size from the data; any size builds the model here.
    head_kwargs = {"num_labels": 2} if config.task == "classification" else {}
    model, model_config = models.build(config, **head_kwargs)
    x = jnp.zeros((1, config.seq_len), jnp.int32)
    inputs = (x, x) if config.model.family == "t5" else (x,)  # Encoder and decoder inputs.
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs))  # No allocation.
    assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)) > 0
    assert model_config.max_len >= config.seq_len


def test_config_files_exist():
    names = {os.path.basename(p) for p in CONFIG_FILES}
    assert {"gpt_tiny.py", "gpt_small.py", "gpt_medium.py", "gpt_large.py", "gpt_xl.py"} <= names
    bert = {f"bert_{size}.py" for size in ("tiny", "mini", "small", "base", "large")}
    assert bert | {"bert.py", "bert_classify.py"} <= names
    assert {"t5.py", "t5_tiny.py", "t5_small.py", "t5_base.py", "t5_large.py"} <= names


def test_variant_argument():
    config = _load(os.path.join(ROOT, "configs", "gpt.py"), "size=small")
    assert config.model.size == "small"
    with pytest.raises(config_lib.ConfigError, match="colour"):
        _load(os.path.join(ROOT, "configs", "gpt.py"), "colour=red")


def _valid():
    return config_lib.base_config()


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda c: setattr(c, "total_steps", 0), "total_steps"),
        (lambda c: setattr(c, "per_device_batch_size", -1), "per_device_batch_size"),
        (lambda c: setattr(c.model, "family", "rnn"), "model.family"),
        (lambda c: setattr(c.model, "size", "huge"), "model.size"),
        (lambda c: setattr(c.model, "family", "bert"), "cannot run task"),
        (lambda c: setattr(c, "task", "dance"), "task"),
        (lambda c: setattr(c.optimizer, "schedule", "step"), "optimizer.schedule"),
        (lambda c: setattr(c, "seq_len", 4096), "seq_len"),
        (lambda c: setattr(c.optimizer, "warmup_steps", 10_000), "warmup_steps"),
        (lambda c: setattr(c.dataset, "name", "text_files"), "train_files"),
        (lambda c: setattr(c.parallelism, "dcn_data", 0), "parallelism.dcn_data"),
        (lambda c: setattr(c.parallelism, "dcn_fsdp", -1), "parallelism.dcn_fsdp"),
    ],
)
def test_bad_values_are_named(change, match):
    config = _valid()
    change(config)
    with pytest.raises(config_lib.ConfigError, match=match):
        run_lib.validate(config)


def _replaced(config, key, value):
    """A ConfigDict like `config` with one raw value changed (as a hand-edited file could)."""
    raw = config.to_dict()
    node = raw
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    return ml_collections.ConfigDict(raw)


def test_unknown_key_is_named():
    config = _replaced(_valid(), "optimizer.learning_rat", 1.0)
    with pytest.raises(config_lib.ConfigError, match="optimizer.learning_rat"):
        run_lib.validate(config)


def test_wrong_type_is_named():
    config = _replaced(_valid(), "log_every_steps", "often")
    with pytest.raises(config_lib.ConfigError, match="log_every_steps"):
        run_lib.validate(config)


def test_shape_keys_override_the_named_size_and_are_checked_per_family():
    from ptjax.config_presets import bert_config, gpt_config, t5_config

    config = bert_config("small")  # A 6 x 384 MiniLM shape on bert/small's other settings.
    config.model.update(num_layers=6, d_model=384, num_heads=12, d_ff=1536)
    cfg = models.MODELS["bert"].make_config(config)
    assert (cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.d_ff) == (6, 384, 12, 1536)
    config = t5_config("tiny")
    config.model.num_layers = 3  # The decoder follows unless given its own depth.
    assert models.MODELS["t5"].make_config(config).num_decoder_layers == 3
    config.model.num_decoder_layers = 1
    assert models.MODELS["t5"].make_config(config).num_decoder_layers == 1
    config = gpt_config("tiny")
    config.model.d_kv = 32
    with pytest.raises(config_lib.ConfigError, match="d_kv=32 does not apply to model.family='gpt"):
        run_lib.validate(config)
    config = gpt_config("tiny")
    config.model.num_heads = 3
    with pytest.raises(config_lib.ConfigError, match="d_model=128 is not divisible by num_heads=3"):
        run_lib.validate(config)
