"""A run: its workdir's layout, config, tokenizer, model, checkpoints and the facts recorded
when it starts; and the full validation of a run's config.

    run = Run.open("runs/spam")             # config.json, run.json and the tokenizer
    model, _ = run.build()                  # the model with the run's head
    params = run.restore_params(model, "best")
    generator = run.generator()             # or TextClassifier/QuestionAnswerer.from_workdir

A workdir holds config.json (the run's config), run.json (`RUN_FILE`: family, task, label
names, input prefix, tokenizer; written by the trainer's process 0 when the run starts, so that
inference needs neither the training data nor the task's set-up), tokenizer/ (the run's own
tokenizer, unless tokenizer.path names one), checkpoints/<step>/ and best/<step>/ (Orbax), and
TensorBoard events. Opening a run never writes to it.

`validate` checks a config against the schema (ptjax.config) and the model and task
registries. It lives here and not in ptjax.config, so that the config stays a leaf that models,
data and tasks read without importing the registries that import them.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import ml_collections
from etils import epath

from ptjax import config as config_lib
from ptjax import models, tasks
from ptjax.data.tokenizer import Tokenizer, load_tokenizer, tokenizer_file
from ptjax.errors import ConfigError
from ptjax.train import adaptation
from ptjax.train.checkpoint import restore_params
from ptjax.train.state import init_params

RUN_FILE = "run.json"


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first key that cannot work: the schema's checks, then the
    task, model family and size against the registries, the family's own checks, and what
    depends on the model's shape."""
    config_lib.check_schema(config)
    if config.task not in tasks.TASKS:
        raise ConfigError(f"Config key task={config.task!r}; known tasks: {sorted(tasks.TASKS)}.")
    family = models.MODELS.get(config.model.family)
    if family is None:
        raise ConfigError(
            f"Config key model.family={config.model.family!r}; known: {sorted(models.MODELS)}."
        )
    if config.model.size not in family.sizes:
        raise ConfigError(
            f"Config key model.size={config.model.size!r} for family {config.model.family!r}; "
            f"known sizes: {sorted(family.sizes)}."
        )
    task = tasks.TASKS[config.task]
    if config.model.family not in task.families:
        raise ConfigError(
            f"Config key model.family={config.model.family!r} cannot run task={config.task!r}; "
            f"that task takes {', '.join(task.families)}."
        )
    family.validate(config)
    adaptation.validate(config)
    max_len = family.make_config(config).max_len
    if config.sample_every_steps and config.sample_max_new_tokens >= max_len:
        raise ConfigError(
            f"Config key sample_max_new_tokens={config.sample_max_new_tokens} must lie in "
            f"[1, {max_len - 1}]: a sample (prompt included) fits the model's max_len={max_len}."
        )


def default_data_dir(config: ml_collections.ConfigDict) -> str:
    """dataset.data_dir, else TFDS_DATA_DIR, else TFDS's own default."""
    if config.dataset.data_dir:
        return config.dataset.data_dir
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def tokenizer_path(config: ml_collections.ConfigDict, workdir: str) -> str:
    """tokenizer.path, else the run's own: tokenizer/spm.model, or tokenizer/tokenizer.json for a
    Hugging Face import (ptjax.interop)."""
    return config.tokenizer.path or tokenizer_file(os.path.join(workdir, "tokenizer"))


def input_prefix(config: ml_collections.ConfigDict) -> str:
    """The text the run's dataset puts before every input (the task's `input_prefix`)."""
    return tasks.TASKS[config.task]().input_prefix(config)


def resolve_checkpoint(workdir: str, checkpoint: str = "latest") -> tuple[str, int]:
    """(step directory, step) for 'latest', 'best', a step number, or a path."""
    root = epath.Path(workdir)
    if checkpoint in ("latest", "best"):
        directory = root / ("checkpoints" if checkpoint == "latest" else "best")
        steps_found = sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit())
        if not steps_found:
            what = "checkpoints" if checkpoint == "latest" else "best checkpoint (set best_metric)"
            raise FileNotFoundError(f"{workdir!r} holds no {what} in {directory}.")
        return str(directory / str(steps_found[-1])), steps_found[-1]
    if checkpoint.isdigit():
        path = root / "checkpoints" / checkpoint
        if not path.exists():
            raise FileNotFoundError(f"{workdir!r} has no checkpoint step {checkpoint} ({path}).")
        return str(path), int(checkpoint)
    path = epath.Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint={checkpoint!r} does not exist.")
    return str(path), int(path.name) if path.name.isdigit() else -1


def run_facts(
    config: ml_collections.ConfigDict,
    tokenizer: str,
    label_names: list[str] | None,
    workdir: str | None = None,
) -> dict[str, Any]:
    """What RUN_FILE records of a run: what inference needs without the data or the task. The
    tokenizer's path is relative to `workdir` when it lies inside it."""
    if workdir and os.path.abspath(tokenizer).startswith(os.path.abspath(workdir) + os.sep):
        tokenizer = os.path.relpath(os.path.abspath(tokenizer), os.path.abspath(workdir))
    return {
        "family": config.model.family,
        "task": config.task,
        "label_names": list(label_names) if label_names is not None else None,
        "input_prefix": input_prefix(config),
        "tokenizer": tokenizer,
    }


def write_run_file(workdir: str, facts: dict[str, Any]) -> None:
    """Writes RUN_FILE atomically (a temporary file renamed over it); process 0 calls it. A
    resumed run whose facts are unchanged leaves the file as it is, untouched."""
    path = epath.Path(workdir) / RUN_FILE
    text = json.dumps(facts, indent=2) + "\n"
    if path.exists() and path.read_text() == text:
        return
    tmp = epath.Path(workdir) / (RUN_FILE + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # Over an earlier one (a resumed run).


def read_run_file(workdir: str) -> dict[str, Any]:
    """RUN_FILE's facts; {} for a run started before ptjax wrote it. A corrupt file is an error
    that names it."""
    path = epath.Path(workdir) / RUN_FILE
    if not path.exists():
        return {}
    try:
        facts = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); it records the run's facts.") from e
    if not isinstance(facts, dict):
        raise ValueError(f"{path} holds {type(facts).__name__}, not an object of run facts.")
    return facts


def run_params(
    config: ml_collections.ConfigDict,
    facts: dict[str, Any],
    workdir: str,
    step_dir: str,
    model: Any,
    shardings: Any = None,
) -> Any:
    """The model parameters of a run's checkpoint `step_dir` (into `shardings`, a function of an
    abstract tree; None: numpy): read as saved, or for a LoRA run (config finetune.lora) its
    adapters and new head merged with the base its RUN_FILE names (ptjax.train.adaptation)."""
    abstract = jax.eval_shape(functools.partial(init_params, config, model), jax.random.PRNGKey(0))
    lora_spec = adaptation.spec(config)
    if lora_spec is None:
        return restore_params(step_dir, abstract, shardings)
    base = adaptation.base_of(facts, workdir)
    return adaptation.plain_params(lora_spec, base, step_dir, abstract, shardings)


class Run:
    """An existing run, opened read-only from its workdir (see the module docstring)."""

    def __init__(
        self,
        workdir: str,
        config: ml_collections.ConfigDict,
        tokenizer: Tokenizer,
        facts: dict[str, Any],
    ):
        self.workdir = workdir
        self.config = config
        self.tokenizer = tokenizer
        self.facts = facts

    @classmethod
    def open(cls, workdir: str) -> Run:
        config = config_lib.load_run_config(workdir)
        tokenizer = load_tokenizer(tokenizer_path(config, workdir))
        return cls(workdir, config, tokenizer, read_run_file(workdir))

    @property
    def family(self) -> models.ModelFamily:
        return models.MODELS[self.config.model.family]

    @property
    def task(self) -> type[tasks.Task]:
        """The run's task class (tools check what a run can serve with issubclass)."""
        return tasks.TASKS[self.config.task]

    @property
    def input_prefix(self) -> str:
        return self.facts.get("input_prefix", input_prefix(self.config))

    def task_facts(self) -> dict[str, Any]:
        """What the task's set-up found (Task.run_facts): RUN_FILE's; for a run started before
        ptjax wrote it, the task is set up again on the run's data."""
        if "label_names" in self.facts:
            return {"label_names": self.facts["label_names"]}
        task = tasks.TASKS[self.config.task]()
        task.setup(self.config, data_dir=default_data_dir(self.config))
        return task.run_facts()

    def label_names(self) -> list[str]:
        """A classification run's class names ([] for a task without labels)."""
        return list(self.task_facts().get("label_names") or [])

    def build(self, **head_kwargs: Any) -> tuple[Any, Any]:
        """(model, model config) of the run, its head sized as the task's set-up sized it."""
        task = tasks.TASKS[self.config.task]()
        known = task.head_kwargs(self.config)
        if known is None:  # The data told the run: its facts say what it found.
            known = task.inference_head(self.task_facts())
        return models.build(self.config, self.tokenizer.vocab_size, **{**known, **head_kwargs})

    def checkpoint(self, which: str = "latest") -> tuple[str, int]:
        """(step directory, step) of 'latest', 'best', a step number, or a path."""
        return resolve_checkpoint(self.workdir, which)

    def restore_params(self, model: Any, which: str = "latest", shardings: Any = None) -> Any:
        """The parameters of checkpoint `which` for `model` (only they are read); a LoRA run's
        with its adapters merged into its base's kernels."""
        return run_params(
            self.config, self.facts, self.workdir, self.checkpoint(which)[0], model, shardings
        )

    def generator(self, which: str | None = None) -> Any:
        """A ptjax.decoding.Generator of the run's latest checkpoint (or `which`: 'best', a
        step or a step directory), its parameters on the first local device."""
        from ptjax.decoding.generator import Generator

        model, _ = self.build()
        if self.family.decode_fns is None:
            raise ValueError(f"Model family {self.config.model.family!r} cannot generate text.")
        first = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        params = self.restore_params(
            model, which or "latest", lambda tree: jax.tree.map(lambda _: first, tree)
        )
        return Generator(
            model,
            params,
            self.tokenizer,
            self.family,
            input_prefix=self.input_prefix,
            kernels=self.config.model.kernels,
            attention_setting=self.config.model.attention,
        )
