"""The shared training loop: `train_and_evaluate(config, workdir)` for every task and model.

Every check that can fail (config, workdir, run lock, tokenizer, checkpoint shapes, data) runs
before the first write into the workdir, so a mistake never changes an existing run. While it
writes, the run holds WORKDIR/run.lock; SIGTERM/SIGINT end it after the current step with a
checkpoint; a NaN/inf step never updates the parameters (see config.nonfinite_policy).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from ptjax import backend, models, tasks
from ptjax import config as config_lib
from ptjax import run as run_lib
from ptjax.data import corpora
from ptjax.data.tokenizer import (
    Tokenizer,
    check_vocab,
    load_tokenizer,
    train_tokenizer,
)
from ptjax.run import default_data_dir, tokenizer_path  # noqa: F401 - used and re-exported.
from ptjax.train import (
    accounting,
    adaptation,
    evals,
    lock,
    optim,
    parallel,
    preemption,
    source_run,
    steps,
)
from ptjax.train import metrics as metrics_lib
from ptjax.train.checkpoint import (
    BestParams,
    Checkpointer,
    CheckpointMismatchError,
    CorruptCheckpointError,
    DataLayoutError,
    restore_matching_params,
)
from ptjax.train.state import AdaptedState, TrainState, init_params, init_state

CONFIG_FILE = "config.json"
# What a ptjax workdir may hold; a directory with anything else is not one.
_WORKDIR_ENTRIES = (
    "config",
    "checkpoints",
    "tokenizer",
    "events.out.tfevents",
    "train",
    "eval",
    "profile",
    "samples",
    "run.lock",
    "run.json",  # ptjax.run.RUN_FILE
    "results",
    "best",
)


class WorkdirError(ValueError):
    """The workdir cannot hold this run."""


# Errors that mean "fix your config, data or workdir": scripts print them without a traceback.
USER_ERRORS = (
    config_lib.ConfigError,
    WorkdirError,
    CheckpointMismatchError,
    CorruptCheckpointError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    corpora.DataError,
    metrics_lib.NonFiniteLossError,
)


def check_workdir(workdir: str) -> bool:
    """Returns whether the workdir already holds a run; refuses paths that are not workdirs."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir={workdir!r} is a file, not a directory.")
    if not os.path.isdir(workdir):
        return False
    entries = os.listdir(workdir)
    if "config.hf.json" in entries:  # ptjax.interop.convert.HF_CONFIG_COPY
        raise WorkdirError(
            f"--workdir={workdir!r} holds a Hugging Face checkpoint imported by "
            "convert_checkpoint.py (parameters only, no optimizer state to resume); train from it "
            f"in a new workdir with --config.init_checkpoint={workdir}."
        )
    foreign = [e for e in entries if not e.startswith(_WORKDIR_ENTRIES)]
    if foreign:
        raise WorkdirError(
            f"--workdir={workdir!r} already holds files that are not from a ptjax run "
            f"({', '.join(sorted(foreign)[:5])}); choose an empty or new directory."
        )
    return bool(entries)


def load_or_train_tokenizer(
    config: ml_collections.ConfigDict, workdir: str, data_dir: str, task: Any = None
) -> Tokenizer:
    """The configured tokenizer, the one cached in the workdir, the init_checkpoint run's (copied
    into the workdir), or a new one trained there on the task's texts (`task.tokenizer_texts`
    where the task has it, e.g. both sides of text pairs; else the dataset's text_key)."""
    path = tokenizer_path(config, workdir)
    if config.tokenizer.path:
        try:
            return load_tokenizer(path)
        except (OSError, ValueError) as e:
            raise config_lib.ConfigError(f"Config key tokenizer.path: {e}") from None
    if os.path.exists(path):
        return load_tokenizer(path)
    source = source_run.source_tokenizer(config.init_checkpoint) if config.init_checkpoint else None
    if source is not None:
        path = os.path.join(workdir, "tokenizer", os.path.basename(source))
        if jax.process_index() == 0:
            logging.info("Using the tokenizer of init_checkpoint's run: %s -> %s", source, path)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # The model file and what sits next to it (a Hugging Face tokenizer's config).
            for name in sorted(os.listdir(os.path.dirname(source))):
                src = os.path.join(os.path.dirname(source), name)
                dst = os.path.join(os.path.dirname(path), name)
                if not os.path.isfile(src):
                    continue
                with open(src, "rb") as f:
                    data = f.read()
                with open(dst + ".tmp", "wb") as f:
                    f.write(data)
                os.replace(dst + ".tmp", dst)
        multihost_utils.sync_global_devices("ptjax tokenizer copied")
        return load_tokenizer(path)
    if task is not None and not task.trains_tokenizer:
        raise config_lib.ConfigError(
            f"task={config.task!r} trains no tokenizer of its own: set init_checkpoint to a "
            "pretraining run (its tokenizer comes along) or tokenizer.path."
        )
    if jax.process_index() == 0:
        logging.info(
            "Training a %d-piece sentencepiece model on %s:%s -> %s",
            config.tokenizer.vocab_size,
            config.dataset.name,
            config.dataset.train_split,
            path,
        )
        os.makedirs(os.path.dirname(path), exist_ok=True)
        texts = None
        if task is not None:
            texts = task.tokenizer_texts(
                config, data_dir=data_dir, max_texts=config.tokenizer.max_sentences
            )
        if texts is None:
            texts = corpora.iterate_texts(
                config.dataset,
                config.dataset.train_split,
                data_dir=data_dir,
                max_texts=config.tokenizer.max_sentences,
            )
        train_tokenizer(
            texts,
            path,
            vocab_size=config.tokenizer.vocab_size,
            model_type=config.tokenizer.model_type,
            control_symbols=models.MODELS[config.model.family].control_symbols,
        )
    multihost_utils.sync_global_devices("ptjax tokenizer written")
    return Tokenizer(path)


def save_config(config: ml_collections.ConfigDict, workdir: str, step: int) -> None:
    """Writes config.json on a fresh run; on a resume with changes, config.step_<N>.json."""
    if jax.process_index() != 0:
        return
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True)
    path = os.path.join(workdir, CONFIG_FILE)
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return
        path = os.path.join(workdir, f"config.step_{step}.json")
        logging.info("The config differs from the one this run started with; saved as %s", path)
    with open(path + ".tmp", "w") as f:  # Then renamed: a kill never leaves half a file.
        f.write(text)
    os.replace(path + ".tmp", path)


def train_batches(
    task: Any,
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    data_seed: int,
    data_kwargs: dict[str, Any],
) -> Any:
    """The task's train iterator with its order drawn from `data_seed` (the run's seed, unless
    a resume under another process count drew a new one), which its checkpoints record."""
    if data_seed != config.seed:
        config = config.copy_and_resolve_references()
        config.seed = data_seed  # Read by the input pipeline only.
    iterator = task.train_batches(config, tokenizer, **data_kwargs)
    iterator.data_seed = data_seed
    return iterator


def resharded_data_seed(seed: int, step: int) -> int:
    """The data seed of a run resumed at `step` under another process count: new for each such
    resume, and the same on every process."""
    digest = hashlib.sha256(f"{seed}:reshard:{step}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _lock_workdir(workdir: str, cleanup: contextlib.ExitStack) -> None:
    """Process 0 takes WORKDIR/run.lock until the run ends; every process learns if it could."""
    error = None
    if jax.process_index() == 0:
        try:
            cleanup.callback(lock.RunLock.acquire(workdir).release)
        except lock.WorkdirBusyError as e:
            error = str(e)
    if jax.process_count() > 1:
        locked = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if not locked and error is None:
            error = f"Process 0 could not lock --workdir={workdir!r}; see its log."
    if error:
        raise WorkdirError(error)


def _samples_text(config: ml_collections.ConfigDict, task: Any) -> bool:
    """Whether the run's model continues text prompts (sample_prompts): causal LMs do."""
    return task.samples_text and models.MODELS[config.model.family].decode_fns is not None


def check_tokenizer_fits(
    config: ml_collections.ConfigDict, tokenizer: Tokenizer, model_config: Any
) -> None:
    """Config checks that need the tokenizer: vocabulary size and sample prompt lengths."""
    family = models.MODELS[config.model.family]
    try:
        # A T5 model holds the tokenizer's pieces plus its sentinel ids.
        check_vocab(tokenizer, model_config.vocab_size - family.extra_vocab(config))
    except ValueError as e:
        raise config_lib.ConfigError(f"Config key model.vocab_size: {e}") from None
    if config.sample_every_steps and _samples_text(config, tasks.TASKS[config.task]):
        longest = 1 + max(len(ids) for ids in tokenizer.encode_batch(list(config.sample_prompts)))
        if longest + config.sample_max_new_tokens > model_config.max_len:
            raise config_lib.ConfigError(
                f"Config keys sample_prompts / sample_max_new_tokens: a prompt of {longest} "
                f"tokens plus {config.sample_max_new_tokens} new ones exceeds the model's "
                f"max_len={model_config.max_len}; shorten the prompt or lower "
                f"sample_max_new_tokens to at most {model_config.max_len - longest}."
            )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, stop_after_steps: int | None = None
) -> dict[str, Any]:
    """Trains (or resumes) the configured model in `workdir`; returns the last metrics.

    `stop_after_steps` ends this invocation early, with a checkpoint, after that many steps (a
    later call resumes exactly); the schedule still follows config.total_steps. SIGTERM or
    SIGINT does the same after the current step and sets result['preempted'].
    """
    run_lib.validate(config)
    config, taken = source_run.adopt_source_shape(config, workdir)
    if taken:
        run_lib.validate(config)
        if jax.process_index() == 0:
            logging.info(
                "From init_checkpoint's run %s: %s.",
                source_run.find_run_dir(config.init_checkpoint) or workdir,
                ", ".join(taken),
            )
    resuming = check_workdir(workdir)
    try:
        lock.check_not_busy(workdir)
    except lock.WorkdirBusyError as e:
        raise WorkdirError(str(e)) from None
    with contextlib.ExitStack() as cleanup:
        return _train_and_evaluate(config, workdir, resuming, stop_after_steps, cleanup)


def _train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    resuming: bool,
    stop_after_steps: int | None,
    cleanup: contextlib.ExitStack,
) -> dict[str, Any]:
    data_dir = default_data_dir(config)
    # A mesh that does not fit the devices fails here.
    par = parallel.create(config.parallelism, config.model.kernels, config.model.attention)
    logging.info("%s", backend.describe(config.model.kernels, par.devices))
    task, head_kwargs = tasks.create(config, data_dir=data_dir)
    num_devices = jax.local_device_count()
    global_batch = config.per_device_batch_size * jax.device_count()
    checkpoint_dir = os.path.join(workdir, "checkpoints")

    # Read-only checks first: nothing is written into the workdir until they all pass (the
    # tokenizer of a new workdir is the one exception, trained under the run lock).
    checkpointer = None
    if resuming and os.path.isdir(checkpoint_dir):
        checkpointer = Checkpointer(checkpoint_dir, keep=config.keep_checkpoints, read_only=True)
        cleanup.callback(checkpointer.close)
        if checkpointer.all_steps() and not os.path.exists(tokenizer_path(config, workdir)):
            raise WorkdirError(
                f"{workdir} holds checkpoints but no tokenizer at "
                f"{tokenizer_path(config, workdir)}; set tokenizer.path to the one it used."
            )
    locked = False
    if not config.tokenizer.path and not os.path.exists(tokenizer_path(config, workdir)):
        _lock_workdir(workdir, cleanup)
        locked = True
    tokenizer = load_or_train_tokenizer(config, workdir, data_dir, task)
    model, model_config = models.build(config, tokenizer.vocab_size, **head_kwargs)
    check_tokenizer_fits(config, tokenizer, model_config)

    source = config.init_checkpoint and source_run.find_run_dir(config.init_checkpoint)
    adaptation.check_not_adapted(config, run_lib.read_run_file(source) if source else {})
    lora_spec = adaptation.spec(config)
    adapted = None
    if lora_spec is None:
        abstract_params = jax.eval_shape(
            functools.partial(init_params, config, model), jax.random.PRNGKey(0)
        )
    else:  # The base is read now: it is part of every LoRA run's state, resumed or not.
        resumes = checkpointer is not None and bool(checkpointer.all_steps())
        base = adaptation.base_to_adapt(config, workdir, run_lib.read_run_file(workdir), resumes)
        adapted = adaptation.start(
            config, lora_spec, functools.partial(init_params, config, model), base, par.shardings
        )
        abstract_params = jax.eval_shape(lambda: adapted.trainable)
        logging.info(
            "LoRA rank %d (alpha %g, dropout %g) on %s of base %s; trained in full: %s; base "
            "parameters the model does not use: %s.",
            lora_spec.rank,
            lora_spec.alpha,
            lora_spec.dropout,
            ", ".join(lora_spec.targets),
            adapted.base,
            ", ".join(adapted.fresh) or "none",
            ", ".join(adapted.dropped) or "none",
        )
    tx, schedule = optim.make_optimizer(config.optimizer, config.total_steps, abstract_params)
    if adapted is None:
        abstract_state = jax.eval_shape(functools.partial(init_state, config, model, tx))
    else:  # What checkpoints hold: the trainable parameters' state.
        abstract_state = jax.eval_shape(
            lambda: TrainState.create(adapted.trainable, tx, jax.random.PRNGKey(0))
        )
    latest = checkpointer.newest_compatible(abstract_state) if checkpointer else None
    imported = None
    if latest is None and config.init_checkpoint and adapted is None:
        # Fresh parameters first: the checkpoint replaces those it shares with the model, and
        # a new task head keeps its initialisation.
        fresh = jax.jit(
            functools.partial(init_params, config, model),
            out_shardings=par.shardings(abstract_params),
        )(jax.random.split(jax.random.PRNGKey(config.seed))[0])
        imported = restore_matching_params(config.init_checkpoint, fresh, par.shardings)
        logging.info(
            "Initialised %d parameter arrays from %s; %d fresh (%s); %d of the checkpoint "
            "unused (%s).",
            len(imported.restored),
            imported.source,
            len(imported.fresh),
            ", ".join(imported.fresh) or "none",
            len(imported.ignored),
            ", ".join(imported.ignored) or "none",
        )
    data_kwargs = dict(
        data_dir=data_dir,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        local_device_count=num_devices,
    )
    # The data order of a run is fixed by its seed, or by the one a resume under another
    # process count drew (saved with the positions; see reshard_data_on_resume).
    data_seed = config.seed
    if latest is not None:
        data_seed = checkpointer.data_seed(latest, default=config.seed)
    train_iter = train_batches(task, config, tokenizer, data_seed, data_kwargs)
    task.eval_batches(config, tokenizer, **data_kwargs)  # A bad eval split fails now, not later.
    names = task.metric_names()
    if config.best_metric and config.best_metric not in names:
        raise config_lib.ConfigError(
            f"Config key best_metric={config.best_metric!r} is not an eval metric of task "
            f"{config.task!r}; choose one of {', '.join(names)}."
        )

    # From here on the workdir is written.
    if not locked:
        _lock_workdir(workdir, cleanup)
    os.makedirs(workdir, exist_ok=True)
    # Removes temporary directories of a save that was killed (Orbax's own; nothing else).
    checkpointer = Checkpointer(checkpoint_dir, keep=config.keep_checkpoints)
    cleanup.callback(checkpointer.close)  # Waits for the last async save, also on errors.
    restored = None
    if latest is not None:
        try:
            restored = checkpointer.restore_latest(abstract_state, train_iter, par.shardings)
        except DataLayoutError as e:
            if not config.reshard_data_on_resume:
                raise DataLayoutError(f"{e} Nothing was changed.") from None
            # The state alone.
            restored = checkpointer.restore_latest(abstract_state, None, par.shardings)
            data_seed = resharded_data_seed(config.seed, restored[0])
            train_iter = train_batches(task, config, tokenizer, data_seed, data_kwargs)
            logging.warning(
                "%s\nAs reshard_data_on_resume=True: resuming the train state of step %d with "
                "each of the %d processes reading its shard in a new order (data seed %d); "
                "examples of the current epoch may repeat or be left out.",
                e,
                restored[0],
                jax.process_count(),
                data_seed,
            )
    if restored is not None:
        latest, state = restored
        logging.info("Resuming from %s/%d", checkpointer.directory, latest)
    elif adapted is not None:
        state = jax.jit(
            lambda params, rng: TrainState.create(params, tx, rng),
            out_shardings=par.shardings(abstract_state),
        )(adapted.trainable, jax.random.split(jax.random.PRNGKey(config.seed))[1])
    else:
        state = par.init(functools.partial(init_state, config, model, tx), abstract_state)
        if imported is not None:
            state = jax.jit(
                lambda params, rng: TrainState.create(params, tx, rng),
                out_shardings=par.shardings(abstract_state),
            )(imported.params, state.rng)
    step_state = abstract_state  # What the train steps take.
    if adapted is not None:
        state = AdaptedState.adapting(state, adapted.frozen, lora_spec)
        step_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    writer = metrics_lib.create_writer(workdir)
    cleanup.callback(writer.close)
    if restored is None:
        metrics_lib.write_config(writer, config)
    start_step = int(state.step)
    save_config(config, workdir, start_step)
    if jax.process_index() == 0:  # What inference needs without the data (ptjax.run.Run).
        labels = task.run_facts().get("label_names")
        facts = run_lib.run_facts(config, tokenizer.path, labels, workdir)
        if adapted is not None:
            facts[adaptation.FACTS_KEY] = adaptation.facts(lora_spec, adapted.base)
        run_lib.write_run_file(workdir, facts)
    n_params = sum(int(np.size(x)) for x in jax.tree.leaves(state.params))
    n_frozen = sum(int(np.size(x)) for x in jax.tree.leaves(getattr(state, "frozen", None)))
    opt_bytes = sum(int(np.size(x)) * x.dtype.itemsize for x in jax.tree.leaves(state.opt_state))
    logging.info(
        "Model %s/%s: %d parameters, %d of them trained (optimizer state %.2f MB); %d devices, "
        "global batch %d x %d tokens.",
        config.model.family,
        config.model.size,
        n_params + n_frozen,
        n_params,
        opt_bytes / 1e6,
        jax.device_count(),
        global_batch,
        config.seq_len,
    )

    p_train_steps = par.train_steps(
        steps.train_step,
        step_state,
        model=model,
        task=task,
        tx=tx,
        schedule=schedule,
        num_microbatches=config.num_microbatches,
    )
    p_eval_step = par.eval_step(steps.eval_step, model=model, task=task)
    model_params_of = evals.model_params_of(par, lora_spec)
    state = par.place(state)
    best = None
    if config.best_metric:
        best_dir = os.path.join(workdir, "best")
        best = BestParams(best_dir, config.best_metric, config.best_metric_mode)
        cleanup.callback(best.close)

    generator = None
    family = models.MODELS[config.model.family]
    sampling = bool(config.sample_every_steps) and _samples_text(config, task)
    if sampling and (par.mesh is not None or jax.process_index() == 0):
        from ptjax.decoding.generator import Generator

        chosen = dict(kernels=config.model.kernels, attention_setting=config.model.attention)
        if par.mesh is None:  # Process 0 alone, on one local device: no collective.
            first = jax.local_devices()[:1]
            generator = Generator(model, None, tokenizer, family, devices=first, **chosen)
        else:  # Every process, on the parameters as they are sharded; process 0 writes.
            generator = Generator(model, None, tokenizer, family, mesh=par.mesh, **chosen)

    history: list[dict[str, Any]] = []
    progress = metrics_lib.Progress(start_step, config.total_steps)
    summary: dict[str, Any] = {}
    eval_metrics: dict[str, float] = {}
    last_saved = latest
    stop_policy = config.nonfinite_policy == "stop"
    if start_step >= config.total_steps:
        logging.info(
            "The run in %s is complete at step %d; raise --config.total_steps to train on.",
            workdir,
            start_step,
        )
    end_step = config.total_steps
    if stop_after_steps is not None:
        end_step = min(end_step, start_step + stop_after_steps)
    stop = cleanup.enter_context(preemption.StopRequests(config.preemption_sync_every_steps))
    # MFU: the model's FLOPs per step against the devices' peak (None: unknown device kind).
    flops_per_step = accounting.model_flops_per_step(config, model_config)
    peak = accounting.peak_flops(config.peak_flops_per_device)
    if peak is None:
        logging.info(
            "No train/mfu: device kind %r is not in ptjax.train.accounting's peak table; set "
            "peak_flops_per_device.",
            jax.devices()[0].device_kind,
        )
    profiler = accounting.Profiler(
        os.path.join(workdir, "profile"), start_step + 1, config.profile_steps
    )
    cleanup.callback(profiler.stop)
    # Steps after which something happens; a call of k steps never runs past one of them.
    every = [config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps]
    if sampling:  # On every process: the calls of k steps must be the same everywhere.
        every.append(config.sample_every_steps)
    marks = [profiler.first_step, profiler.last_step] if config.profile_steps else []
    done = start_step
    while done < end_step:
        k = min([config.steps_per_execution, end_step - done] + [n - done % n for n in every])
        k = min([k] + [m - done for m in marks if m > done])
        batch = parallel.stack_batches([next(train_iter) for _ in range(k)])
        profiler.before_step(done)
        state, step_metrics = p_train_steps(state, batch)
        done += k
        profiler.after_step(done, state)
        history.append(step_metrics)
        stopping = False
        for step in range(done - k + 1, done + 1):  # A Python flag; a collective every N steps
            stopping = stop.should_stop(step) or stopping  # in a multi-process run.
        last = done == end_step
        if done % config.log_every_steps == 0 or last or stopping:
            first = done - metrics_lib.steps_of(history) + 1
            summary = metrics_lib.summarize_train(history)
            history = []
            nonfinite, first_bad = summary.pop("nonfinite_steps"), summary.pop("first_nonfinite")
            if nonfinite and stop_policy:
                raise metrics_lib.nonfinite_error(
                    first + int(first_bad), last_saved, str(checkpointer.directory)
                )
            if stop_policy:
                metrics_lib.check_finite(summary["loss"], done, last_saved)
            else:
                summary["skipped_steps"] = nonfinite
                if nonfinite:
                    logging.warning(
                        "Skipped the updates of %d step(s) in %d..%d: NaN/inf loss or gradients.",
                        nonfinite,
                        first,
                        done,
                    )
            tps, eta = progress.update(done, summary.pop("tokens"))
            summary["tokens_per_second"] = tps
            if peak:
                summary["mfu"] = flops_per_step * progress.steps_per_second / peak
            writer.write_scalars(done, {f"train/{k}": v for k, v in summary.items()})
            metrics_lib.log_progress(done, config.total_steps, summary, tps, eta)
            writer.flush()
        model_params = None  # This step's, made once if an eval or a sample takes them.
        if done % config.eval_every_steps == 0 or last:
            model_params = model_params_of(state)
            eval_metrics, details = evals.run_eval(
                task,
                model,
                p_eval_step,
                model_params,
                config,
                tokenizer,
                data_kwargs,
                par=par,
            )
            writer.write_scalars(done, {f"eval/{k}": v for k, v in eval_metrics.items()})
            evals.write_results(workdir, config.dataset.eval_split, done, eval_metrics, details)
            if details.get("samples"):  # Decoded eval examples (seq2seq): a few, as text.
                samples = evals.samples_markdown(details["samples"])
                writer.write_texts(done, {"eval/samples": samples})
            logging.info(
                "eval at step %d: %s",
                done,
                "  ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()),
            )
            if best is not None:
                try:
                    improved = best.update(
                        done, eval_metrics, functools.partial(par.global_view, state.params)
                    )
                except KeyError as e:
                    raise config_lib.ConfigError(e.args[0]) from None
                if improved:
                    logging.info("New best %s=%.4f at step %d", best.metric, best.value, done)
        if generator is not None and (done % config.sample_every_steps == 0 or last):
            params = model_params if model_params is not None else model_params_of(state)
            params = params if par.mesh is not None else par.local_copy(params)
            evals.write_samples(generator, params, config, writer, done)
        if done % config.checkpoint_every_steps == 0 or last or stopping:
            # Between log intervals, fetch the steps' flags: never save after a bad step.
            if history and stop_policy and (bad := metrics_lib.first_nonfinite(history)) >= 0:
                raise metrics_lib.nonfinite_error(
                    done - metrics_lib.steps_of(history) + 1 + bad,
                    last_saved,
                    str(checkpointer.directory),
                )
            checkpointer.save(done, par.global_view(state.checkpointed()), train_iter)
            last_saved = done
        if stopping:
            checkpointer.wait()
            writer.flush()
            logging.info(
                "Preempted by %s at step %d; checkpoint saved in %s; rerun the same command "
                "to resume.",
                stop.signal_name,
                done,
                checkpointer.directory / str(done),
            )
            break
    return {
        "train": summary,
        "eval": eval_metrics,
        "step": done,
        "preempted": stop.signal_name is not None and done < end_step,
    }
