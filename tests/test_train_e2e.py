"""End to end on 8 fake devices: train, TensorBoard events, checkpoints, exact resume, refusals."""

import glob
import json
import math
import os

import numpy as np
import pytest
import xla_env

from ptjax.config import ConfigError
from ptjax.config_presets import gpt_config
from ptjax.data.tf_setup import import_tf
from ptjax.run import Run
from ptjax.train import trainer
from ptjax.train.checkpoint import CheckpointMismatchError

tf = import_tf()


def tiny_config(data_dir, tokenizer_file, **changes):
    config = gpt_config("tiny")
    config.dataset.data_dir = data_dir
    config.tokenizer.path = tokenizer_file
    # One block: these runs test the trainer, not depth (test_models, test_scan do), and each
    # block adds about a seventh to a tiny run's compile and CPU time.
    config.model.num_layers = 1
    config.seq_len = 32
    config.per_device_batch_size = 1  # x 8 fake devices.
    config.total_steps = 12
    config.optimizer.warmup_steps = 2
    config.log_every_steps = 1
    config.eval_every_steps = 6
    config.checkpoint_every_steps = 6
    config.keep_checkpoints = 2
    config.dataset.max_eval_batches = 2
    config.dataset.shuffle_buffer = 64
    config.sample_every_steps = 6
    config.sample_max_new_tokens = 4
    for key, value in changes.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def read_scalars(workdir):
    """{tag: {step: value}} from the run's real TensorBoard event files."""
    out = {}
    for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars" or value.HasField(
                    "simple_value"
                ):
                    number = (
                        value.simple_value
                        if value.HasField("simple_value")
                        else float(tf.make_ndarray(value.tensor))
                    )
                    out.setdefault(value.tag, {})[event.step] = number
    return out


def read_tags(workdir):
    tags = set()
    for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    return tags


def snapshot(directory):
    """Every file under `directory` with its size and mtime: to prove nothing was touched."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            stat = os.stat(path)
            out[path] = (stat.st_size, stat.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, data_dir, tokenizer_file):
    workdir = str(tmp_path_factory.mktemp("straight"))
    # profile_steps: steps 2 and 3 are traced into WORKDIR/profile (losses are unchanged).
    config = tiny_config(data_dir, tokenizer_file, profile_steps=2)
    result = trainer.train_and_evaluate(config, workdir)
    return workdir, result


def test_trains_with_events_checkpoints_and_config(straight_run):
    workdir, result = straight_run
    assert result["step"] == 12
    tags = read_tags(workdir)
    for tag in [
        "train/loss",
        "train/learning_rate",
        "train/grad_norm",
        "train/tokens_per_second",
        "train/mfu",
        "train/accuracy",
        "eval/loss",
        "eval/perplexity",
        "eval/accuracy",
        "config",
        "samples",
    ]:
        assert tag in tags, tag
    assert any("hparams" in t for t in tags)
    scalars = read_scalars(workdir)
    assert sorted(scalars["train/loss"]) == list(range(1, 13))
    assert sorted(scalars["eval/loss"]) == [6, 12]
    losses = scalars["train/loss"]
    assert losses[12] < losses[1]  # Learning, even in 12 tiny steps.
    # keep_checkpoints=2: steps 6 and 12, each with the state and the pipeline position.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "6"]
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "12", "data"))
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["model"]["size"] == "tiny"
    assert glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "*.xplane.pb"))
    assert 0 < scalars["train/mfu"][12] < 1


def test_resume_is_exact(straight_run, tmp_path, data_dir, tokenizer_file):
    """12 steps straight == 5 steps, stop, resume from the step-5 checkpoint, 7 more."""
    straight_dir, straight = straight_run
    workdir = str(tmp_path / "resumed")
    config = tiny_config(data_dir, tokenizer_file, checkpoint_every_steps=5)
    first = trainer.train_and_evaluate(config, workdir, stop_after_steps=5)
    assert first["step"] == 5
    second = trainer.train_and_evaluate(config, workdir)
    assert second["step"] == 12
    a = read_scalars(straight_dir)
    b = read_scalars(workdir)
    for step in range(1, 13):
        assert b["train/loss"][step] == a["train/loss"][step], step
        assert b["train/grad_norm"][step] == a["train/grad_norm"][step], step
    assert second["eval"] == straight["eval"]


def test_steps_per_execution_runs_the_same_steps(straight_run, tmp_path, data_dir, tokenizer_file):
    """5 steps per call (cut to land on logs at 4, 8, 12 and evals/checkpoints at 6, 12: calls
    of 4, 1 (stopped at 5, resumed), 1, 2, 4 steps): the same run as one step per call, to the
    bit (the eval after step 12; the logged means of the same per-step losses)."""
    straight_dir, straight = straight_run
    workdir = str(tmp_path / "multi")
    config = tiny_config(
        data_dir, tokenizer_file, steps_per_execution=5, log_every_steps=4, sample_every_steps=0
    )
    assert trainer.train_and_evaluate(config, workdir, stop_after_steps=5)["step"] == 5
    result = trainer.train_and_evaluate(config, workdir)
    assert result["step"] == 12
    a, b = read_scalars(straight_dir), read_scalars(workdir)
    assert sorted(b["train/loss"]) == [4, 5, 8, 12]  # 5: the stop's log line.
    for first, last in [(1, 4), (5, 5), (6, 8), (9, 12)]:
        expected = np.mean([a["train/loss"][s] for s in range(first, last + 1)])
        assert b["train/loss"][last] == pytest.approx(expected, rel=1e-7), last  # float32 events
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "6"]
    assert result["eval"] == straight["eval"]


def test_finished_run_is_not_retrained(straight_run, data_dir, tokenizer_file):
    workdir, _ = straight_run
    before = snapshot(os.path.join(workdir, "checkpoints"))
    result = trainer.train_and_evaluate(tiny_config(data_dir, tokenizer_file), workdir)
    assert result["step"] == 12
    assert snapshot(os.path.join(workdir, "checkpoints")) == before


def test_other_model_shape_is_refused_and_nothing_changes(straight_run, data_dir, tokenizer_file):
    workdir, _ = straight_run
    before = snapshot(workdir)
    config = tiny_config(data_dir, tokenizer_file)
    config.model.max_len = 128  # Another position table: one parameter changes shape.
    with pytest.raises(CheckpointMismatchError, match=r"wpe/embedding.*\(256, 128\)"):
        trainer.train_and_evaluate(config, workdir)
    assert snapshot(workdir) == before


def test_invalid_config_fails_before_any_write(tmp_path, data_dir, tokenizer_file):
    config = tiny_config(data_dir, tokenizer_file)
    config.total_steps = -3
    with pytest.raises(ConfigError, match="total_steps"):
        trainer.train_and_evaluate(config, str(tmp_path / "never"))
    assert not os.path.exists(tmp_path / "never")


def test_workdir_that_is_not_a_run_is_refused(tmp_path, data_dir, tokenizer_file):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(trainer.WorkdirError, match="thesis.tex"):
        trainer.train_and_evaluate(tiny_config(data_dir, tokenizer_file), str(tmp_path))
    a_file = tmp_path / "thesis.tex"
    with pytest.raises(trainer.WorkdirError, match="is a file"):
        trainer.train_and_evaluate(tiny_config(data_dir, tokenizer_file), str(a_file))
    assert a_file.read_text() == "precious"


def test_missing_data_file_is_named(tmp_path, data_dir, tokenizer_file):
    config = tiny_config(data_dir, tokenizer_file, **{"dataset.name": "text_files"})
    config.dataset.train_files = str(tmp_path / "no_such_corpus.txt")
    with pytest.raises(FileNotFoundError, match="no_such_corpus.txt"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))


def test_empty_corpus_is_refused(tmp_path, data_dir, tokenizer_file):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    config = tiny_config(data_dir, tokenizer_file)
    config.dataset.name = "text_files"
    config.dataset.train_files = str(empty)
    with pytest.raises(ValueError, match="empty.txt"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))


def test_tokenizer_vocab_mismatch_is_named(tmp_path, data_dir, tokenizer_file):
    config = tiny_config(data_dir, tokenizer_file)
    config.model.vocab_size = 1000  # The tokenizer has 512 pieces.
    with pytest.raises(ValueError, match="512"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))


def test_init_checkpoint_starts_from_another_run_without_touching_it(
    straight_run, tmp_path, data_dir, tokenizer_file
):
    source, straight = straight_run
    before = snapshot(source)
    config = tiny_config(data_dir, tokenizer_file, init_checkpoint=source, eval_every_steps=1)
    config.optimizer.learning_rate = 1e-9  # One step that barely moves: eval shows the start.
    result = trainer.train_and_evaluate(config, str(tmp_path / "finetune"), stop_after_steps=1)
    assert result["step"] == 1
    assert abs(result["eval"]["loss"] - straight["eval"]["loss"]) < 1e-3
    assert snapshot(source) == before


def test_restore_params_names_a_mismatch(straight_run):
    import jax
    import numpy as np

    from ptjax.train.checkpoint import restore_params

    source, _ = straight_run
    params = restore_params(source, _abstract_params(source))
    assert params["wte"]["embedding"].shape == (512, 128)
    wrong = jax.tree.map(lambda x: x, _abstract_params(source))
    wrong["ln_f"]["scale"] = jax.ShapeDtypeStruct((64,), np.float32)
    with pytest.raises(CheckpointMismatchError, match="ln_f/scale"):
        restore_params(source, wrong)


def _abstract_params(workdir):
    import jax

    from ptjax import models

    config = gpt_config("tiny")
    config.seq_len, config.model.num_layers = 32, 1  # tiny_config's.
    model, _ = models.build(config, vocab_size=512)
    return jax.eval_shape(lambda: trainer.init_params(config, model, jax.random.PRNGKey(0)))


def test_generator_from_workdir_splits_a_batch_over_devices(straight_run):

    workdir, _ = straight_run
    gen = Run.open(workdir).generator()
    prompts = ["In the beginning", "Jesus said", "", "And God", "The king of Israel"] * 2
    together = gen.generate(prompts, max_new_tokens=6)  # 10 prompts over 8 devices.
    alone = [gen.generate([p], max_new_tokens=6)[0] for p in prompts[:5]]
    assert together[:5] == alone and together[5:] == alone
    assert all(isinstance(t, str) for t in together)
    sampled_a = gen.generate(prompts[:3], max_new_tokens=6, temperature=1.0, top_p=0.9, seed=1)
    sampled_b = gen.generate(prompts[:3], max_new_tokens=6, temperature=1.0, top_p=0.9, seed=1)
    assert sampled_a == sampled_b
    beams = gen.generate(prompts[:2], max_new_tokens=6, num_beams=3)
    assert len(beams) == 2


def _generate_cli(*args):
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts", "generate.py")
    env = dict(os.environ, XLA_FLAGS=xla_env.xla_flags(), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_generate_script_prints_one_greedy_completion_per_prompt(straight_run, tmp_path):
    workdir, _ = straight_run
    done = _generate_cli(
        f"--workdir={workdir}",
        "--prompt=In the beginning",
        "--prompt=God",
        "--max_new_tokens=5",
        "--temperature=0",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.strip().splitlines()) == 2
    out = tmp_path / "out.jsonl"
    done = _generate_cli(
        f"--workdir={workdir}",
        "--prompt=God",
        f"--output={out}",
        "--max_new_tokens=3",
        "--temperature=0.7",
        "--top_k=5",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(out.read_text())["prompt"] == "God"


def test_generate_script_names_a_missing_run_and_a_corrupt_checkpoint(straight_run, tmp_path):
    import shutil

    done = _generate_cli(f"--workdir={tmp_path / 'nothing'}", "--prompt=x")
    assert done.returncode == 2 and "config.json" in done.stderr
    workdir, _ = straight_run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    for path in glob.glob(str(copy / "checkpoints" / "12" / "state" / "**" / "*"), recursive=True):
        if os.path.isfile(path) and os.path.getsize(path) > 1000:
            with open(path, "r+b") as f:
                f.truncate(100)
    done = _generate_cli(f"--workdir={copy}", "--prompt=x")
    assert done.returncode != 0
    assert "checkpoint" in done.stderr.lower()


def test_trainer_runs_and_restores_on_a_mesh(tmp_path, data_dir, tokenizer_file):
    """parallelism.mode='mesh' through train_and_evaluate: trains (both steps in one call),
    evaluates, checkpoints the sharded state, and a second call restores it onto the mesh (and
    finds the run complete)."""
    config = tiny_config(
        data_dir,
        tokenizer_file,
        total_steps=2,
        steps_per_execution=2,
        log_every_steps=2,
        eval_every_steps=2,
        checkpoint_every_steps=2,
        sample_every_steps=0,
        **{"parallelism.mode": "mesh", "parallelism.fsdp": 2, "parallelism.tensor": 2},
    )
    workdir = str(tmp_path / "mesh")
    first = trainer.train_and_evaluate(config, workdir)
    assert first["step"] == 2 and math.isfinite(first["train"]["loss"])
    config.steps_per_execution = 1  # The same two steps in two calls: the same loss.
    one_by_one = trainer.train_and_evaluate(config, str(tmp_path / "mesh_1"))
    assert first["train"]["loss"] == one_by_one["train"]["loss"]
    config.steps_per_execution = 2
    assert math.isfinite(first["eval"]["loss"])
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]
    assert trainer.train_and_evaluate(config, workdir)["step"] == 2  # Restored, complete.
    config.parallelism.data = 3  # 3 x 2 x 2 != 8 devices.
    with pytest.raises(ConfigError, match="must cover all 8 devices"):
        trainer.train_and_evaluate(config, str(tmp_path / "other"))
