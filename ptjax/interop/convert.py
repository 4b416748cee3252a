"""Hugging Face model directories <-> ptjax run directories.

    from ptjax.interop import export_hf, import_hf
    import_hf("downloads/bert-base-uncased", "runs/bert_base_hf")   # then init_checkpoint=...
    export_hf("runs/spam", "exports/spam")                           # then from_pretrained(...)

Import: config.json gives the family's model config, which must be one of the family's named
sizes up to what a run config can override (vocabulary, positions, segment table, dropout, and
the shape keys of `ptjax.models.SHAPE_KEYS`: the nearest size with those overrides);
the weights give the parameters (every tensor accounted for, see `tensor_map`); the tokenizer
files are copied into WORKDIR/tokenizer (T5's spiece.model as spm.model; a Llama's
tokenizer.model as spm.model when there is no tokenizer.json, which transformers reads first
where both are; a tokenizer.json is built from vocab.txt or vocab.json + merges.txt when the
directory has none). The run config is the family's fine-tuning preset for the task the HF
architecture implies, with the model's sizes.
Written: config.json (as `trainer.save_config` writes it), config.hf.json (the source's
config.json, which an export carries over), tokenizer/, and checkpoints/0/state holding
{'params': ...}: the layout of a training checkpoint's state item, which `init_checkpoint`,
`scripts/evaluate.py` and `scripts/generate.py` read. It is not a resumable training state:
train from it with `--config.init_checkpoint=WORKDIR` into a new workdir.

Export: a workdir's latest checkpoint (or a given step directory) to config.json,
model.safetensors and the tokenizer files, for `from_pretrained`: those imported (or trained),
with a sentencepiece spm.model as T5's spiece.model, or for a Llama as tokenizer.model and a
tokenizer_config.json for LlamaTokenizer (its special tokens, add_bos_token); a scanned run's
layer stacks (model.scan_layers) are unstacked first. An import is unscanned; a scanned run
starts from it with init_checkpoint, which converts the layout. Neither direction writes into
a non-empty directory; both build in a temporary sibling and rename it into place.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import tempfile
from types import ModuleType
from typing import Any

import ml_collections

from ptjax import config_presets, models
from ptjax import run as run_lib
from ptjax.config import load_run_config
from ptjax.data import tokenizer as tokenizer_lib
from ptjax.interop import (
    hf_bert,
    hf_gpt2,
    hf_llama,
    hf_pooling,
    hf_t5,
    hf_tokenizers,
    hf_weights,
)
from ptjax.interop.tensor_map import ConversionError
from ptjax.models import scan
from ptjax.run import validate

# Hugging Face model_type -> its mapping module; ptjax family -> the same modules.
_CONVERTERS = (hf_bert, hf_gpt2, hf_llama, hf_t5)
KINDS: dict[str, ModuleType] = {
    model_type: m for m in _CONVERTERS for model_type in getattr(m, "MODEL_TYPES", (m.MODEL_TYPE,))
}
BY_FAMILY: dict[str, ModuleType] = {m.FAMILY: m for m in _CONVERTERS}
HF_CONFIG_COPY = "config.hf.json"  # The source's config.json, kept in the workdir.
# Keys of a source config.json that an export regenerates rather than carries over.
_REGENERATED = ("architectures", "scale_decoder_outputs", "transformers_version", "dtype")
_T5_TOKENIZER = {
    "tokenizer_class": "T5Tokenizer",
    "extra_ids": 100,
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
}


@dataclasses.dataclass
class HFModel:
    """A Hugging Face checkpoint as ptjax sees it."""

    family: str  # ptjax model family (a key of ptjax.models.MODELS).
    task: str  # ptjax task whose head the checkpoint holds.
    architecture: str  # The HF class it came from.
    model_config: Any  # The family's config dataclass.
    params: dict[str, Any]  # float32 numpy, nested dicts.
    head_kwargs: dict[str, Any]  # e.g. {'num_labels': 3}.
    hf_config: dict[str, Any]
    notes: list[str]  # What the import did besides one-to-one copies.

    def module(self) -> Any:
        """The linen module that takes these params."""
        family = models.MODELS[self.family]
        return family.module_for(self.task)(self.model_config, **self.head_kwargs)


def load_hf(hf_dir: str) -> HFModel:
    """Reads an HF model directory's config.json and weights into ptjax terms (no tokenizer)."""
    hf = hf_weights.read_config(hf_dir)
    kind = KINDS.get(hf.get("model_type"))
    if kind is None:
        raise ConversionError(
            f"{hf_dir}/config.json model_type={hf.get('model_type')!r}: ptjax converts "
            f"{sorted(KINDS)}."
        )
    arch = kind.architecture(hf)
    task, head = kind.ARCHITECTURES[arch]
    cfg = kind.model_config(hf)
    state = hf_weights.read_state_dict(hf_dir)
    notes: list[str] = []
    head_kwargs: dict[str, Any] = {}
    if kind is hf_bert:
        labels = hf_bert.num_labels(hf) if head == hf_bert.CLASSIFIER else 0
        if labels:
            head_kwargs["num_labels"] = labels
        params, report = hf_bert.params_and_report(
            state, cfg, labels=labels, required=(head,) if head else ()
        )
        extra = [h for h in hf_bert.heads(params) if h != (head or "mlm")]
        if extra:
            raise ConversionError(
                f"{hf_dir}: a {arch} checkpoint with the weights of other heads {extra}."
            )
        if "pooler" not in params["bert"]:
            params["bert"]["pooler"] = hf_bert.fresh_pooler(cfg)
            notes.append(f"bert/pooler: initialised afresh ({arch} has none; unused by {task})")
    elif kind is hf_t5:
        # transformers 5 ties an unscaled (1.1) lm_head to `shared` and then saves only that.
        tied_in_file = hf.get("tie_word_embeddings", True) is not False and "shared.weight" in state
        if not cfg.tie_word_embeddings and "lm_head.weight" not in state and tied_in_file:
            state = {**state, "lm_head.weight": state["shared.weight"]}
            notes.append("lm_head: a copy of shared.weight (tied in the checkpoint)")
        params, report = hf_t5.params_and_report(state, cfg)
    else:
        params, report = kind.params_and_report(state, cfg)
    notes += [f"dropped: {name}" for name in report.ignored]
    notes += [f"tied copy checked: {tie}" for tie in report.ties]
    family = kind.FAMILY
    return HFModel(family, task, arch, cfg, params, head_kwargs, hf, notes)


# The preset an imported model's run starts from, by the task its architecture serves.
PRESETS = {
    ("gpt", "causal_lm"): config_presets.gpt_config,
    ("llama", "causal_lm"): config_presets.llama_config,
    ("t5", "seq2seq"): functools.partial(config_presets.t5_config, task="seq2seq"),
    ("bert", "masked_lm"): config_presets.bert_config,
    ("bert", "classification"): config_presets.bert_classification_config,
    ("bert", "extractive_qa"): config_presets.bert_qa_config,
}


def _preset(family: str, task: str, size: str) -> ml_collections.ConfigDict:
    return PRESETS[family, task](size)


def run_config(model: HFModel, tokenizer_vocab: int) -> ml_collections.ConfigDict:
    """The run config of an imported model: its family's preset for its task at the named size
    whose hyper-parameters (with the run config's overrides) equal the checkpoint's."""
    family = models.MODELS[model.family]
    cfg = model.model_config
    want = dataclasses.asdict(cfg)
    near: list[tuple[int, str, list[str]]] = []
    for size in family.sizes:
        c = _preset(model.family, model.task, size)
        c.model.vocab_size = cfg.vocab_size
        c.model.max_len = cfg.max_len
        c.model.dropout_rate = cfg.dropout_rate
        c.model.attention_dropout_rate = cfg.attention_dropout_rate
        c.seq_len = min(c.seq_len, cfg.max_len)
        if model.family == "bert":
            c.model.type_vocab_size = cfg.type_vocab_size
            c.model.num_labels = model.head_kwargs.get("num_labels", 0)
        if model.family == "t5":
            c.seq2seq.extra_ids = cfg.vocab_size - tokenizer_vocab  # Sentinels above the pieces.
        if model.family == "llama":  # Settings a run config carries beyond the shape.
            c.model.rope_theta = cfg.rope_theta
            c.model.rope_scaling = cfg.rope_scaling
            c.model.norm_eps = cfg.norm_eps
            c.model.tie_embeddings = "true" if cfg.tie_embeddings else "false"
            c.model.qkv_bias = "true" if cfg.qkv_bias else "false"
        got = dataclasses.asdict(family.make_config(c))
        differing = [k for k in want if got[k] != want[k]]
        if not differing:
            validate(c)
            return c
        other = [k for k in differing if k not in models.SHAPE_KEYS]
        diffs = [f"{k}={want[k]} (size {size!r}: {got[k]})" for k in differing]
        near.append((len(other), len(differing), size, diffs, c, differing))
    # No named size has the checkpoint's shape: the nearest one that differs only in shape
    # keys, with the run config's model.<shape key> overrides (a 6 x 384 MiniLM as bert/small).
    other_count, _, size, diffs, c, differing = min(near, key=lambda n: n[:3])
    if other_count == 0:
        for key in models.SHAPE_KEYS:  # In order: a T5 decoder follows a new encoder depth.
            if key in want and getattr(family.make_config(c), key) != want[key]:
                c.model[key] = want[key]
        if dataclasses.asdict(family.make_config(c)) == want:
            validate(c)
            return c
    raise ConversionError(
        f"The checkpoint's {type(cfg).__name__} matches none of ptjax's {model.family} sizes "
        f"({', '.join(family.sizes)}), and a run config can only override vocab_size, max_len, "
        f"dropout_rate{', type_vocab_size' if model.family == 'bert' else ''} and the shape "
        f"({', '.join(models.SHAPE_KEYS)}). Nearest: {size!r}, which differs in "
        f"{'; '.join(diffs)}. Use ptjax.interop.load_hf to run it from Python."
    )


def _check_empty(path: str, what: str) -> None:
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise FileExistsError(
            f"{what} {path!r} already exists and is not an empty directory; ptjax never "
            "writes into one (choose a new directory)."
        )


def _build_in_sibling(path: str, what: str, build: Any) -> None:
    """Runs build(tmp) in a temporary sibling of `path`, then renames it to `path`."""
    _check_empty(path, what)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(path))}.", dir=parent)
    try:
        build(tmp)
        _check_empty(path, what)
        if os.path.isdir(path):
            os.rmdir(path)  # Empty (checked): replaced by the finished directory.
        os.rename(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)


def _import_tokenizer(hf_dir: str, target: str, family: str) -> str:
    """Copies the HF tokenizer into `target`; returns the path `load_tokenizer` takes. T5's
    spiece.model, and a Llama's tokenizer.model where there is no tokenizer.json, become
    spm.model."""
    os.makedirs(target)
    copied = hf_tokenizers.copy_files(hf_dir, target)
    spiece = os.path.join(target, hf_tokenizers.SPIECE)
    if family == "t5" and hf_tokenizers.SPIECE in copied:
        os.replace(spiece, os.path.join(target, tokenizer_lib.SPM_FILE))
        if hf_tokenizers.TOKENIZER_CONFIG not in copied:  # Record what HF assumes: 100 sentinels.
            _write_json(
                os.path.join(target, hf_tokenizers.TOKENIZER_CONFIG), _T5_TOKENIZER, indent=2
            )
        return os.path.join(target, tokenizer_lib.SPM_FILE)
    if os.path.exists(spiece):
        os.remove(spiece)  # Only T5 reads a sentencepiece model named so.
    # Llama 2's sentencepiece model. With a tokenizer.json too, that is read, as transformers
    # does; HFTokenizer then encodes as transformers' LlamaTokenizer (see hf_tokenizers).
    llama_spm = os.path.join(hf_dir, hf_tokenizers.LLAMA_SPM)
    if (
        family == "llama"
        and hf_tokenizers.TOKENIZER_JSON not in copied
        and os.path.isfile(llama_spm)
    ):
        path = os.path.join(target, tokenizer_lib.SPM_FILE)
        shutil.copyfile(llama_spm, path)
        config_path = os.path.join(target, hf_tokenizers.TOKENIZER_CONFIG)
        config = {}
        if os.path.exists(config_path):
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        if "tokenizer_class" not in config:  # Record what HF assumes: encode as LlamaTokenizer.
            config["tokenizer_class"] = hf_tokenizers.LLAMA_TOKENIZER_CLASSES[0]
            _write_json(config_path, config, indent=2)
        return path
    path = os.path.join(target, hf_tokenizers.TOKENIZER_JSON)
    if not os.path.exists(path):
        hf_tokenizers.build(hf_dir).save(path)
    return path


def _save_params(workdir: str, params: dict[str, Any]) -> None:
    """checkpoints/0/state = {'params': params}, as a training checkpoint's state item."""
    import orbax.checkpoint as ocp
    from etils import epath

    manager = ocp.CheckpointManager(
        epath.Path(workdir) / "checkpoints",
        item_handlers={"state": ocp.StandardCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False),
    )
    manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params})))
    manager.wait_until_finished()
    manager.close()


def _write_json(path: str, data: dict[str, Any], **kwargs: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, **kwargs))


def import_hf(hf_dir: str, out_workdir: str) -> HFModel:
    """Converts an HF model directory into a new ptjax workdir (see the module docstring)."""
    _check_empty(out_workdir, "Output workdir")
    model = load_hf(hf_dir)
    run_config(model, model.model_config.vocab_size)  # A size fits, before any tokenizer work.

    def build(tmp: str) -> None:
        path = _import_tokenizer(hf_dir, os.path.join(tmp, "tokenizer"), model.family)
        tokenizer = tokenizer_lib.load_tokenizer(path)
        if isinstance(tokenizer, hf_tokenizers.HFTokenizer):
            model.notes += [
                f"tokenizer.json {what}: switched off (ptjax's pipelines own it)"
                for what in tokenizer.switched_off
            ]
        config = run_config(model, tokenizer.vocab_size)
        extra = models.MODELS[model.family].extra_vocab(config)
        try:
            tokenizer_lib.check_vocab(tokenizer, model.model_config.vocab_size - extra)
        except ValueError as e:
            raise ConversionError(f"{hf_dir}: the tokenizer does not fit the model: {e}") from None
        # As trainer.save_config writes it (that module pulls in TensorFlow).
        _write_json(os.path.join(tmp, "config.json"), config.to_dict(), indent=2, sort_keys=True)
        _write_json(os.path.join(tmp, HF_CONFIG_COPY), model.hf_config, indent=2)
        labels = None
        if "num_labels" in model.head_kwargs:  # The source's names, in label-id order.
            id2label = model.hf_config.get("id2label") or {}
            count = model.head_kwargs.get("num_labels", 0)
            labels = [str(id2label.get(str(i), f"LABEL_{i}")) for i in range(count)]
        facts = run_lib.run_facts(config, path, labels, tmp)
        _write_json(os.path.join(tmp, run_lib.RUN_FILE), facts, indent=2)
        _save_params(tmp, model.params)
        carried = hf_pooling.copy_files(hf_dir, os.path.join(tmp, hf_pooling.ST_DIR))
        if carried:
            kept = (
                f"sentence-transformers files kept in {hf_pooling.ST_DIR}/ ({', '.join(carried)})"
            )
            try:
                st = hf_pooling.settings(os.path.join(tmp, hf_pooling.ST_DIR))
            except (OSError, ValueError) as e:  # The model imports; its pooling is the user's.
                model.notes.append(f"{kept}; TextEmbedder needs pooling=...: {e}")
            else:
                model.notes.append(
                    f"{kept}: TextEmbedder pools {'+'.join(st['pooling']) or 'mean'}"
                    f"{', L2-normalised' if st['normalize'] else ''}"
                )

    _build_in_sibling(out_workdir, "Output workdir", build)
    for note in model.notes:
        logging.info("import %s: %s", hf_dir, note)
    return model


def _locate(source: str) -> tuple[str, str]:
    """(workdir, checkpoint step directory) of a workdir (its latest checkpoint) or a step
    directory inside one (checkpoints/<step>, best/<step>)."""
    source = os.path.abspath(source)
    workdir = source
    for _ in range(3):
        if os.path.exists(os.path.join(workdir, "config.json")):
            break
        workdir = os.path.dirname(workdir)
    else:
        raise FileNotFoundError(f"{source!r} is not a ptjax workdir or a checkpoint inside one.")
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        if "model_type" in json.load(f):
            raise ValueError(
                f"{workdir!r} is a Hugging Face model directory, not a ptjax workdir; import it "
                "(hf_dir) instead of exporting it."
            )
    if os.path.isdir(os.path.join(source, "state")):
        return workdir, source
    directory = os.path.join(workdir, "checkpoints")
    steps = (
        sorted(int(p) for p in os.listdir(directory) if p.isdigit())
        if os.path.isdir(directory)
        else []
    )
    if not steps:
        raise FileNotFoundError(f"{workdir!r} holds no checkpoints in {directory}.")
    return workdir, os.path.join(directory, str(steps[-1]))


def _export_llama_spm(tokenizer: Any, out_dir: str, written: list[str]) -> None:
    """Writes a Llama run's sentencepiece model as tokenizer.model with a tokenizer_config.json
    for transformers' LlamaTokenizer (the copied one, completed); adds their names to `written`."""
    shutil.copyfile(tokenizer.path, os.path.join(out_dir, hf_tokenizers.LLAMA_SPM))
    written.append(hf_tokenizers.LLAMA_SPM)
    config_path = os.path.join(out_dir, hf_tokenizers.TOKENIZER_CONFIG)
    config: dict[str, Any] = {}
    if hf_tokenizers.TOKENIZER_CONFIG in written:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    else:
        written.append(hf_tokenizers.TOKENIZER_CONFIG)
    reasons = []
    if config.get("tokenizer_class") not in hf_tokenizers.LLAMA_TOKENIZER_CLASSES:
        config["tokenizer_class"] = hf_tokenizers.LLAMA_TOKENIZER_CLASSES[0]
        reasons.append(
            "ptjax encoded it as sentencepiece does, which differs on texts that start with "
            "whitespace"
        )
    from sentencepiece import sentencepiece_model_pb2  # protobuf; only needed here.

    with open(tokenizer.path, "rb") as f:
        proto = sentencepiece_model_pb2.ModelProto.FromString(f.read())
    if proto.trainer_spec.model_type != proto.trainer_spec.BPE:
        reasons.append("it is not a BPE model, and LlamaTokenizer reads it as one")
    roles = [("bos_token", tokenizer.bos_id), ("eos_token", tokenizer.eos_id)]
    roles.append(("unk_token", tokenizer.unk_id))
    if tokenizer.pad_id != tokenizer.unk_id:  # A pad piece (or one the config named).
        roles.append(("pad_token", tokenizer.pad_id))
    for key, token_id in roles:
        piece = tokenizer.id_to_piece(token_id) if token_id >= 0 else None
        if hf_tokenizers.token_content(config.get(key)) != piece:  # Else kept as written.
            config[key] = piece
    config.setdefault("add_bos_token", tokenizer.bos_id >= 0)
    config.setdefault("add_eos_token", False)
    _write_json(config_path, config, indent=2)
    if reasons:
        logging.warning(
            "%s is exported as tokenizer.model for transformers' LlamaTokenizer, whose ids may "
            "differ from ptjax's: %s.",
            tokenizer.path,
            "; ".join(reasons),
        )


def _export_tokenizer(tokenizer: Any, family: str, extra_ids: int, out_dir: str) -> list[str]:
    directory = os.path.dirname(tokenizer.path)
    written = hf_tokenizers.copy_files(directory, out_dir)
    if tokenizer.path.endswith(".json"):
        return written
    if family == "llama":
        _export_llama_spm(tokenizer, out_dir, written)
        return written
    shutil.copyfile(tokenizer.path, os.path.join(out_dir, hf_tokenizers.SPIECE))
    written.append(hf_tokenizers.SPIECE)
    if family == "t5" and hf_tokenizers.TOKENIZER_CONFIG not in written:
        # ptjax's sentinels count down from the model's top id, as T5Tokenizer's extra ids do.
        config = {**_T5_TOKENIZER, "extra_ids": extra_ids}
        _write_json(os.path.join(out_dir, hf_tokenizers.TOKENIZER_CONFIG), config, indent=2)
        written.append(hf_tokenizers.TOKENIZER_CONFIG)
    elif family != "t5":
        logging.warning(
            "%s is a ptjax sentencepiece model, which no Hugging Face tokenizer class reads as "
            "such; it is exported as spiece.model for sentencepiece.",
            tokenizer.path,
        )
    return written


def _saved_model(workdir: str, step_dir: str, config: ml_collections.ConfigDict) -> Any:
    """A checkpoint's model parameters as float32 numpy, in the layer layout they were saved
    in; a LoRA run's (`config`, the run's) merged with its base (what its adapters compute,
    as one model)."""
    from ptjax.train import checkpoint  # Orbax: imported where a checkpoint is read.

    if not config.finetune.lora.rank:
        return checkpoint.saved_params(step_dir)
    run = run_lib.Run.open(workdir)
    model, _ = run.build()
    logging.info("Merging the LoRA adapters of %s into its base's kernels.", step_dir)
    return run.restore_params(model, step_dir)


def export_hf(source: str, out_dir: str) -> str:
    """Writes a ptjax checkpoint as an HF model directory; returns the HF architecture."""
    _check_empty(out_dir, "Output directory")
    workdir, step_dir = _locate(source)
    config = load_run_config(workdir)
    kind = BY_FAMILY[config.model.family]
    tokenizer = tokenizer_lib.load_tokenizer(
        config.tokenizer.path or tokenizer_lib.tokenizer_file(os.path.join(workdir, "tokenizer"))
    )
    cfg = models.MODELS[config.model.family].make_config(config, tokenizer.vocab_size)
    # Hugging Face has one tensor per layer: a scanned run's stacks are unstacked first.
    cfg = dataclasses.replace(cfg, scan_layers=False)
    params = scan.unstack_layers(_saved_model(workdir, step_dir, config))
    state, arch = kind.params_to_hf(params, cfg)
    if kind is hf_bert:
        labels = int(state["classifier.bias"].shape[0]) if "classifier.bias" in state else 0
        hf = hf_bert.hf_config(cfg, arch, labels=labels, pad_id=tokenizer.pad_id)
    elif kind is hf_gpt2:
        hf = hf_gpt2.hf_config(cfg, arch, eos_id=tokenizer.eos_id)
    elif kind is hf_llama:
        hf = hf_llama.hf_config(cfg, arch, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
    else:
        hf = hf_t5.hf_config(cfg, arch, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
    source_config = os.path.join(workdir, HF_CONFIG_COPY)
    if os.path.exists(source_config):  # Labels, generation settings, task prefixes, ...
        with open(source_config, encoding="utf-8") as f:
            carried = {k: v for k, v in json.load(f).items() if k not in _REGENERATED}
        if len(carried.get("id2label", {})) != len(hf.get("id2label", {})):
            carried.pop("id2label", None)
            carried.pop("label2id", None)
        hf = {**hf, **{k: v for k, v in carried.items() if k not in hf or "label" in k}}
    names = run_lib.read_run_file(workdir).get("label_names") or []
    if names and len(names) == len(hf.get("id2label", {})):  # The run's classes, as trained.
        hf["id2label"] = {str(i): name for i, name in enumerate(names)}
        hf["label2id"] = {name: i for i, name in enumerate(names)}

    def build(tmp: str) -> None:
        hf_weights.write_model(tmp, hf, state)
        _export_tokenizer(tokenizer, config.model.family, config.seq2seq.extra_ids, tmp)
        hf_pooling.copy_files(os.path.join(workdir, hf_pooling.ST_DIR), tmp)

    _build_in_sibling(out_dir, "Output directory", build)
    return arch
