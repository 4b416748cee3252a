"""Orbax checkpoints: the train state plus each process's input-pipeline position.

Layout: WORKDIR/checkpoints/<step>/{state, data}. The state is saved from its global arrays
as they are sharded (`Parallel.global_view`): each process writes its own shards (OCDBT files
per process, merged into one tree at the end) while the step loop goes on; only the shards a
process writes are copied to its host, once, before `save` returns. Restores read straight
into the shardings the run asks for (`shardings`: a function of the abstract tree, e.g.
`Parallel.shardings`), under any mesh or process count; without one they give numpy arrays.

Orbax writes a step into `<step>.orbax-checkpoint-tmp` and renames it when complete, so a run
killed mid-save leaves the previous checkpoints as they were; the next writable Checkpointer
deletes such temporary directories (and nothing else).

A newest checkpoint that cannot be read (a truncated or deleted file) is never deleted:
`restore_latest` warns, falls back to the newest readable one and renames the unreadable ones to
`<step>.unreadable-<time>`, so the run can save that step again and the damaged files stay for
inspection. A checkpoint of another model shape is refused, naming the parameters; one of the
other layer layout (model.scan_layers changed) is converted on restore (ptjax.models.scan).

Resume order (trainer.py): this workdir's latest checkpoint, then `init_checkpoint`
(parameters only, restored into the new model), then a fresh initialisation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import traverse_util
from jax.experimental import multihost_utils

from ptjax.models import scan


def absolute(path: str) -> epath.Path:
    """`path` as Orbax needs it: absolute (a relative --workdir is relative to the current
    directory); bucket paths (gs://...) as they are."""
    path = os.fspath(path)
    return epath.Path(path if "://" in path else os.path.abspath(path))


# A function from an abstract tree (arrays or ShapeDtypeStructs) to its shardings, e.g.
# `Parallel.shardings`: where a restore puts what it reads.
Shardings = Callable[[Any], Any]


class CheckpointMismatchError(ValueError):
    """A checkpoint whose parameters do not fit the configured model."""


class CorruptCheckpointError(ValueError):
    """A checkpoint whose files cannot be read."""


class DataLayoutError(CheckpointMismatchError):
    """Input-pipeline positions saved by another number of processes (or another data order)."""


DATA_LAYOUT_FILE = "layout.json"  # In each step's data item: process count and data seed.


def _read(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Runs an Orbax read; a failure becomes an error that names the checkpoint."""
    try:
        return fn(*args, **kwargs)
    except (CheckpointMismatchError, FileNotFoundError):
        raise
    except Exception as e:  # Orbax/TensorStore raise many kinds for damaged files.
        raise CorruptCheckpointError(
            f"Checkpoint {what} could not be read ({type(e).__name__}: {e}). It may be "
            "truncated or damaged; remove that step directory to use an earlier one."
        ) from e


class DataIteratorHandler(ocp.CheckpointHandler):
    """Saves each process's data iterator position next to the train state."""

    def save(self, directory: epath.Path, args: DataIteratorSave) -> None:
        args.iterator.save(os.fspath(directory / f"process_{jax.process_index()}"))
        seed = getattr(args.iterator, "data_seed", None)
        if jax.process_index() == 0 and seed is not None:
            layout = {"process_count": jax.process_count(), "data_seed": int(seed)}
            (directory / DATA_LAYOUT_FILE).write_text(json.dumps(layout))

    def restore(self, directory: epath.Path, args: DataIteratorRestore) -> Any:
        path = directory / f"process_{jax.process_index()}"
        saved = sorted(p.name for p in directory.glob("process_*")) if directory.exists() else []
        layout = (
            f"{directory} holds the input-pipeline positions of another number of processes "
            f"({', '.join(saved) or 'none'}; this run is process {jax.process_index()} of "
            f"{jax.process_count()}). A run's data order is fixed by its process count: resume "
            "it with the same number of processes; or resume its train state with each process "
            "reading its shard in a new order, with --config.reshard_data_on_resume=True; or "
            "start a new run from these parameters with --config.init_checkpoint=<that step "
            "directory>."
        )
        if not path.exists():
            if saved:
                raise DataLayoutError(layout)
            raise FileNotFoundError(f"No input-pipeline state in {directory}.")
        recorded = _data_layout(directory)
        seed = getattr(args.iterator, "data_seed", None)
        if recorded and seed is not None and recorded["data_seed"] != seed:
            raise DataLayoutError(
                f"{directory} holds input-pipeline positions of data seed "
                f"{recorded['data_seed']}, and this run's pipeline was built with {seed}. "
                "Nothing was changed."
            )
        try:
            args.iterator.restore(os.fspath(path))
        except FileNotFoundError:
            # Iterator files of another process count (iterators.DataIterator names them by
            # index and count) mean another layout; a missing file of our own, damage.
            prefix = getattr(args.iterator, "checkpoint_prefix", None)
            ours = os.path.basename(prefix(os.fspath(path))) + "." if prefix else None
            names = [p.name for p in path.iterdir()]
            others = [n for n in names if n.startswith("data_iterator-process")]
            if ours and others and not any(n.startswith(ours) for n in others):
                raise DataLayoutError(layout) from None
            raise
        return args.iterator

    def metadata(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
    iterator: Any


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
    iterator: Any


def _data_layout(directory: epath.Path) -> dict | None:
    """A step's recorded data layout ({'process_count', 'data_seed'}), or None (older saves)."""
    path = directory / DATA_LAYOUT_FILE
    return json.loads(path.read_text()) if path.exists() else None


def shape_mismatches(expected: Any, found: Any) -> list[str]:
    """Names of parameters missing, unexpected or of another shape, as 'path: why' lines."""
    want = {"/".join(map(str, k)): tuple(v.shape) for k, v in _flat(expected).items()}
    have = {"/".join(map(str, k)): tuple(v.shape) for k, v in _flat(found).items()}
    problems = [
        f"{k}: checkpoint has shape {have[k]}, model expects {want[k]}"
        for k in sorted(set(want) & set(have))
        if want[k] != have[k]
    ]
    problems += [f"{k}: missing from the checkpoint" for k in sorted(set(want) - set(have))]
    problems += [f"{k}: not in the model" for k in sorted(set(have) - set(want))]
    return problems


def _flat(tree: Any) -> dict:
    if not isinstance(tree, dict):
        tree = dict(tree)
    return traverse_util.flatten_dict(tree)


def _saved_shapes(saved: Any, like: Any) -> Any:
    """The shapes of saved parameters (from Orbax metadata; dtypes are not compared) in the
    layer layout of `like` (scanned or not, see ptjax.models.scan): what the checkpoint gives
    the model."""
    shapes = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), np.float32), dict(saved))
    return scan.to_layout(shapes, scan.layout(like))


class Checkpointer:
    """A CheckpointManager over WORKDIR/checkpoints with keep-N and async saves."""

    def __init__(self, directory: str, *, keep: int, read_only: bool = False):
        """`read_only` opens an existing directory for the checks before a run writes anything
        (nothing is saved through it); otherwise the directory is created and the temporary
        directories of saves that were killed are removed."""
        self.directory = absolute(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": DataIteratorHandler()},
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=not read_only, cleanup_tmp_directories=not read_only
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, iterator: Any) -> None:
        """Starts an asynchronous save of `state` (global jax.Arrays as they are sharded, or host
        arrays) and saves the iterator position now. Returns once this process's shards are
        copied off the devices (so the next step may reuse their buffers); the write goes on
        in the background, and a save that is killed leaves only a temporary directory."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=DataIteratorSave(iterator)
            ),
            force=True,
        )

    def check_compatible(self, step: int, abstract_state: Any) -> str | None:
        """Raises CheckpointMismatchError naming each parameter that does not fit; returns the
        checkpoint's layer layout (ptjax.models.scan: either fits, model.scan_layers aside)."""
        found = _read(self.directory / str(step), self._manager.item_metadata, step)["state"]
        tree = found.tree if hasattr(found, "tree") else found
        saved = _saved_shapes(tree["params"], abstract_state.params)
        problems = shape_mismatches(abstract_state.params, saved)
        if problems:
            raise CheckpointMismatchError(
                f"Checkpoint {self.directory / str(step)} holds a model of another shape than "
                "the config describes (use another --workdir, or fix the config):\n  "
                + "\n  ".join(problems[:20])
            )
        return scan.layout(tree["params"])

    def data_seed(self, step: int, *, default: int) -> int:
        """The data seed recorded with `step`'s input-pipeline positions (`default` for a save
        that recorded none: the run's own seed)."""
        layout = _data_layout(self.directory / str(step) / "data")
        return int(layout["data_seed"]) if layout else default

    def restore(
        self, step: int, abstract_state: Any, iterator: Any, shardings: Shardings | None = None
    ) -> Any:
        """Restores the state and the iterator position of `step` (iterator None: the state
        alone, as a resume under another process count takes it).

        `shardings` (a function from an abstract tree to its shardings, `Parallel.shardings`):
        each process reads its shards straight into them, whatever mesh or process count
        saved the step; None: numpy arrays on the host. A state saved in the other layer
        layout (model.scan_layers changed) is read in its own and converted on the devices,
        parameters and optimizer moments alike."""
        saved_layout = self.check_compatible(step, abstract_state)
        model_layout = scan.layout(abstract_state.params)
        target = _targets(scan.to_layout(abstract_state, saved_layout), shardings)
        if shardings is None:  # Host arrays of the given shapes.
            target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), target)
        items = {"state": ocp.args.StandardRestore(target)}
        if iterator is not None:
            items["data"] = DataIteratorRestore(iterator)
        args = ocp.args.Composite(**items)
        restored = _read(self.directory / str(step), self._manager.restore, step, args=args)
        if saved_layout == model_layout:
            return restored["state"]
        logging.info(
            "Checkpoint %s holds %s layers; converted to the %s layout of model.scan_layers=%s.",
            self.directory / str(step),
            saved_layout,
            model_layout,
            model_layout == scan.SCANNED,
        )
        return _to_layout(restored["state"], model_layout, shardings)

    def newest_compatible(self, abstract_state: Any) -> int | None:
        """The newest step whose metadata reads and fits the model (checked before any write).

        Unreadable newer steps are skipped with a warning; none readable raises
        CorruptCheckpointError, a shape mismatch CheckpointMismatchError; no steps: None.
        """
        problems = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                self.check_compatible(step, abstract_state)
            except (CorruptCheckpointError, FileNotFoundError) as e:
                problems.append(f"step {step}: {e}")
                logging.warning("Checkpoint step %d is unreadable; trying an older one.", step)
                continue
            return step
        if problems:
            raise self._none_readable(problems)
        return None

    def restore_latest(
        self, abstract_state: Any, iterator: Any, shardings: Shardings | None = None
    ) -> tuple[int, Any] | None:
        """(step, state) of the newest checkpoint every process can read, or None if none exist;
        read into `shardings` as `restore` reads.

        Newer unreadable steps are renamed to `<step>.unreadable-<time>` (kept, never deleted)
        with a warning; if no step is readable, CorruptCheckpointError lists why.
        """
        unreadable: dict[int, str] = {}
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state, error = self.restore(step, abstract_state, iterator, shardings), None
            except (CorruptCheckpointError, FileNotFoundError) as e:
                state, error = None, str(e)
            if _everywhere(error is None):
                if unreadable:
                    self._set_aside(unreadable, step)
                return step, state
            unreadable[step] = error or "unreadable on another process"
        if unreadable:
            raise self._none_readable([f"step {s}: {e}" for s, e in unreadable.items()])
        return None

    def _none_readable(self, problems: list[str]) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"No checkpoint in {self.directory} can be read; nothing was changed. Restore the "
            "files, or move the step directories away to start over:\n  " + "\n  ".join(problems)
        )

    def _set_aside(self, unreadable: dict[int, str], restored: int) -> None:
        """Renames unreadable steps out of Orbax's sight: kept for inspection, never overwritten."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for step, error in unreadable.items():
            target = self.directory / f"{step}.unreadable-{stamp}"
            logging.warning(
                "Checkpoint %s is unreadable (%s); resumed from step %d instead. Its files are "
                "kept as %s (delete them when done).",
                self.directory / str(step),
                error,
                restored,
                target,
            )
            if jax.process_index() == 0:
                (self.directory / str(step)).rename(target)
        multihost_utils.sync_global_devices("ptjax unreadable checkpoints set aside")
        self._manager.reload()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


class BestParams:
    """WORKDIR/best/<step>: the parameters of the best eval so far by `config.best_metric`.

    One Orbax step directory (the newest best replaces the previous one), laid out like a
    training checkpoint's `state` item with parameters only, so `init_checkpoint`,
    `scripts/evaluate.py --checkpoint=best` and `Run.generator` (ptjax.run) read it directly. The
    metric, its value and step are kept in WORKDIR/best/best.json, which a resumed run reads.
    """

    RECORD = "best.json"

    def __init__(self, directory: str, metric: str, mode: str):
        self.directory = absolute(directory)
        self.metric, self.mode = metric, mode
        self._manager = ocp.CheckpointManager(
            self.directory,
            item_handlers={"state": ocp.StandardCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, enable_async_checkpointing=False
            ),
        )
        self.value: float | None = None
        self.step: int | None = None
        record = self.directory / self.RECORD
        if record.exists():
            saved = json.loads(record.read_text())
            if saved.get("metric") == metric and saved.get("mode") == mode:
                self.value, self.step = saved["value"], saved["step"]

    def update(self, step: int, metrics: dict[str, float], params: Any) -> bool:
        """Saves `params` if metrics[metric] beats the best so far; returns whether it did.

        `params`: global arrays as they are sharded (each process writes its shards), host
        arrays, or a function giving them (called only for a save)."""
        if self.metric not in metrics:
            raise KeyError(
                f"Config key best_metric={self.metric!r} is not an eval metric; the eval "
                f"metrics are {', '.join(sorted(metrics))}."
            )
        value = float(metrics[self.metric])
        better = self.value is None or (
            value > self.value if self.mode == "max" else value < self.value
        )
        if not better or not np.isfinite(value):
            return False
        if self.step == step:
            return False
        if callable(params):
            params = params()
        self._manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params}))
        )
        self._manager.wait_until_finished()
        self.value, self.step = value, step
        if jax.process_index() == 0:
            record = {"metric": self.metric, "mode": self.mode, "value": value, "step": step}
            tmp = self.directory / (self.RECORD + ".tmp")
            tmp.write_text(json.dumps(record, indent=2))
            tmp.replace(self.directory / self.RECORD)  # Atomic, over the previous record.
        return True

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _step_directory(path: str) -> epath.Path:
    """The checkpoint step directory of `path`: a step directory, a workdir or its checkpoints/."""
    root = absolute(path)
    if not root.exists():
        raise FileNotFoundError(f"init_checkpoint {path!r} does not exist.")
    if (root / "checkpoints").exists():
        root = root / "checkpoints"
    if not (root / "state").exists():
        steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())
        if not steps:
            raise FileNotFoundError(f"init_checkpoint {path!r} holds no checkpoint steps.")
        root = root / str(steps[-1])
    return root


def restore_params(path: str, abstract_params: Any, shardings: Shardings | None = None) -> Any:
    """Parameters from a checkpoint step directory (or a workdir's latest), read-only.

    Every parameter of the model must be in the checkpoint with its shape, and nothing else;
    a checkpoint of the other layer layout (model.scan_layers) is converted to the model's.
    Only the parameters are read (not an optimizer state), into `shardings` (a function of
    the abstract tree, e.g. `Parallel.shardings`; None: numpy on the host). The source is
    never written to.
    """
    root = _step_directory(path)
    saved = _saved_params_metadata(root)
    problems = shape_mismatches(abstract_params, _saved_shapes(saved, abstract_params))
    if problems:
        raise CheckpointMismatchError(
            f"init_checkpoint {root} does not fit the model:\n  " + "\n  ".join(problems[:20])
        )
    target = scan.to_layout(jax.tree.map(_shape_of, abstract_params), scan.layout(saved))
    params = _read_params(root, target, shardings)
    return _to_layout(params, scan.layout(abstract_params), shardings)


def saved_params(path: str) -> Any:
    """The parameters of a checkpoint step directory as saved (its layer layout), as float32
    numpy: what an export writes out. Only the parameters are read."""
    root = _step_directory(path)
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), np.float32), _saved_params_metadata(root)
    )
    return _read_params(root, target, None)


@dataclasses.dataclass
class PartialRestore:
    """What `restore_matching_params` took from a checkpoint and what it left."""

    params: Any  # The model's parameters: restored where the checkpoint has them, else `fresh`.
    source: str  # The step directory read.
    restored: list[str]  # Parameter paths taken from the checkpoint.
    fresh: list[str]  # Model parameters the checkpoint lacks (e.g. a new task head).
    ignored: list[str]  # Checkpoint parameters the model lacks (e.g. the pretraining head).


def restore_matching_params(
    path: str, fresh_params: Any, shardings: Shardings | None = None
) -> PartialRestore:
    """Fine-tuning restore: every parameter the checkpoint and the model share, by path.

    `fresh_params` (host or device arrays) are the model's newly initialised parameters; those
    the checkpoint lacks keep their fresh values (a new head), checkpoint parameters the model
    lacks are ignored (an old head). A shared parameter of another shape is an error naming it
    (a different vocabulary shows up as the word embeddings), as is a checkpoint that shares
    nothing with the model. A checkpoint of the other layer layout (model.scan_layers) is
    converted to the model's. Only the parameters are read, into `shardings` (as
    `restore_params`; None: numpy); the source is only read.
    """
    root = _step_directory(path)
    saved_tree = _saved_params_metadata(root)
    want = _flat(fresh_params)
    have = _flat(_saved_shapes(saved_tree, fresh_params))
    shared = sorted(set(want) & set(have))
    bad = [
        f"{'/'.join(map(str, k))}: checkpoint has shape {tuple(have[k].shape)}, model expects "
        f"{tuple(want[k].shape)}"
        for k in shared
        if tuple(have[k].shape) != tuple(want[k].shape)
    ]
    if bad:
        hint = ""
        if any("embedding" in line for line in bad):
            hint = (
                "\n(An embedding table of another size usually means another tokenizer: use the "
                "source run's tokenizer, or leave tokenizer.path empty to take it from there.)"
            )
        raise CheckpointMismatchError(
            f"init_checkpoint {root} does not fit the model:\n  " + "\n  ".join(bad[:20]) + hint
        )
    if not shared:
        raise CheckpointMismatchError(
            f"init_checkpoint {root} shares no parameter with the model (it holds "
            f"{', '.join(sorted({str(k[0]) for k in have}))}; the model has "
            f"{', '.join(sorted({str(k[0]) for k in want}))})."
        )
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), np.float32), dict(saved_tree)
    )
    params = _to_layout(_read_params(root, target, shardings), scan.layout(fresh_params), shardings)
    saved = _flat(params)

    def pick(key: tuple, fresh: Any) -> Any:
        value = saved[key] if key in have else fresh
        return np.asarray(value, fresh.dtype) if shardings is None else value.astype(fresh.dtype)

    merged = {k: pick(k, v) for k, v in want.items()}
    name = lambda keys: ["/".join(map(str, k)) for k in sorted(keys)]  # noqa: E731
    return PartialRestore(
        params=traverse_util.unflatten_dict(merged),
        source=str(root),
        restored=name(shared),
        fresh=name(set(want) - set(have)),
        ignored=name(set(have) - set(want)),
    )


def _saved_params_metadata(root: epath.Path) -> Any:
    """The Orbax metadata tree of a step directory's saved parameters."""
    meta = _read(root, ocp.StandardCheckpointHandler().metadata, root / "state")
    tree = meta.tree if hasattr(meta, "tree") else meta
    return tree["params"]


def _shape_of(x: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(np.shape(x)), x.dtype)


def _targets(abstract: Any, shardings: Shardings | None) -> Any:
    """Restore targets: `abstract`'s shapes and dtypes, placed by `shardings` if given."""
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype), abstract)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=s),
        abstract,
        shardings(abstract),
    )


def _read_params(root: epath.Path, target: Any, shardings: Shardings | None) -> Any:
    """The `params` of a step directory's state as `target` (ShapeDtypeStructs) describes them,
    read into `shardings` (None: numpy). Nothing else of the state (an optimizer's moments,
    perhaps of another optimizer) is read."""
    item = {"params": _targets(target, shardings)}
    args = ocp.args.PyTreeRestore(
        item=item,
        restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True,
    )
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    return dict(_read(root, checkpointer.restore, root / "state", args=args)["params"])


def _to_layout(tree: Any, layout: str, shardings: Shardings | None) -> Any:
    """`tree` in the layer `layout` (ptjax.models.scan); with `shardings`, converted on the
    devices into the shardings of the converted tree (a no-op where the layout fits)."""
    if layout is None or scan.layout(tree) == layout:
        return tree
    if shardings is None:
        return scan.to_layout(tree, layout)
    abstract = scan.to_layout(jax.eval_shape(lambda t: t, tree), layout)
    convert = functools.partial(scan.to_layout, target=layout)
    return jax.jit(convert, out_shardings=shardings(abstract))(tree)


def _everywhere(ok: bool) -> bool:
    """Whether `ok` holds on every process (one tiny collective in multi-process runs)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))
