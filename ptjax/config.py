"""The one config schema: every key a run may set, with its type and default.

Config files in `configs/` start from `base_config()` and change values; they never add keys.
`check_schema(config)` checks types, choices, ranges and the relations between keys; the checks
that need the model and task registries (family, size, task) are ptjax.run.validate's, which
runs this first. Both name the offending key in their error. This module imports no other of
ptjax's but ptjax.errors: every layer may read the config.
"""

from __future__ import annotations

import difflib
import math

import ml_collections

from ptjax.errors import ConfigError  # noqa: F401 - re-exported: config errors are raised as it.


def base_config() -> ml_collections.ConfigDict:
    """Returns the full schema with defaults (a tiny GPT on the bundled corpus)."""
    c = ml_collections.ConfigDict()

    # What to train.
    c.task = "causal_lm"  # A key of ptjax.tasks.TASKS.
    c.model = ml_collections.ConfigDict()
    c.model.family = "gpt"  # A key of ptjax.models.MODELS.
    c.model.size = "tiny"  # A key of that family's SIZES table.
    # Overrides of single hyper-parameters of the named size (0 / -1 keep the size's value).
    c.model.vocab_size = 0  # 0: take the tokenizer's vocabulary size.
    c.model.max_len = 0  # 0: the size's position table length.
    c.model.dropout_rate = -1.0  # -1: the size's value.
    # Mixed precision: dtype 'bfloat16' computes matmuls and activations in bf16 while
    # parameters, optimizer state, softmax and loss stay float32 (param_dtype 'float32').
    c.model.dtype = "float32"  # Compute dtype.
    c.model.param_dtype = "float32"  # Storage dtype of parameters.
    # Rematerialisation of the transformer blocks (ptjax.models.layers.REMAT_POLICIES): 'none',
    # 'full' (recompute the whole block), 'dots_saveable' (keep matmul outputs),
    # 'dots_with_no_batch_dims_saveable' (keep weight matmuls, recompute attention scores).
    c.model.remat = "none"
    # Run each stack of identical blocks as one nn.scan over a stacked module (parameters get a
    # leading [num_layers] axis): one compiled block instead of num_layers copies. Checkpoints of
    # either layout restore into either (ptjax.models.scan converts them).
    c.model.scan_layers = False
    # Forms the steps are traced with (ptjax.backend): 'auto' picks by the platform of the
    # devices a step runs on, the XLA:CPU-tuned ones on CPU and plain XLA on GPU and TPU;
    # 'cpu' or 'xla' force one.
    c.model.kernels = "auto"
    # Attention kernel (ptjax.models.attention): 'auto' takes Pallas splash/flash on TPU, cuDNN's
    # fused attention on GPU and XLA on CPU; 'xla', 'splash' or 'cudnn' ask for one (a kernel
    # asked for on a platform it does not run on is refused). Training steps with attention
    # dropout take XLA: set model.attention_dropout_rate=0 to give them the kernel.
    c.model.attention = "auto"
    c.model.attention_dropout_rate = -1.0  # Of attention probabilities; -1: model.dropout_rate.
    c.model.num_labels = 0  # Classification heads: 0 takes the dataset's number of labels.
    c.model.type_vocab_size = 0  # BERT segment (token type) table; 0: the size's value (2).
    c.model.pre_ln = False  # BERT: pre-LayerNorm blocks (default: the original post-LN).
    # Shape overrides of the named size (0: the size's), e.g. a 6 x 384 MiniLM as bert/small
    # with num_layers=6, d_model=384, num_heads=12, d_ff=1536. d_kv and num_decoder_layers are
    # T5's (per-head width; decoder depth, 0: the size's, or num_layers when that is set).
    c.model.num_layers = 0
    c.model.d_model = 0
    c.model.num_heads = 0
    c.model.d_ff = 0
    c.model.d_kv = 0
    c.model.num_decoder_layers = 0
    # Llama-style decoders (model.family='llama'; '' / 0 keep the size's): key/value heads of
    # grouped-query attention, the rotary base, Llama 3's rotary scaling ('none' or
    # 'llama3:FACTOR:LOW_FREQ_FACTOR:HIGH_FREQ_FACTOR:ORIGINAL_MAX_LEN'), the RMSNorm epsilon,
    # and whether the output projection is the input embedding ('true' / 'false').
    c.model.num_kv_heads = 0
    c.model.rope_theta = 0.0
    c.model.rope_scaling = ""
    c.model.norm_eps = 0.0
    c.model.tie_embeddings = ""
    c.model.qkv_bias = ""  # 'true': biases on the query/key/value projections (Qwen2).

    # Data.
    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "ptjax_bible"  # 'ptjax_bible', 'text_files', or a TFDS catalogue name.
    c.dataset.data_dir = ""  # '': WORKDIR/../tfds or TFDS_DATA_DIR; a bucket path on TPU VMs.
    c.dataset.text_key = "text"  # Feature holding the text in a TFDS catalogue dataset.
    c.dataset.train_split = "train"
    c.dataset.eval_split = "validation"
    c.dataset.train_files = ""  # For 'text_files': comma-separated paths or globs.
    c.dataset.eval_files = ""
    c.dataset.document_per = "line"  # For 'text_files': 'line' or 'file'.
    c.dataset.shuffle_buffer = 10_000  # Documents (and packed rows) held for shuffling.
    c.dataset.max_eval_batches = 0  # 0: the whole eval split.
    # Labelled data (classification, QA): field names in the examples and the held-out split.
    c.dataset.text_b_key = ""  # Second text of sentence-pair tasks ('' : single sentence).
    c.dataset.label_key = "label"
    c.dataset.test_split = "test"  # For scripts/evaluate.py --split=test.
    c.dataset.test_files = ""  # For 'labeled_files': the test split's paths or globs.
    c.seq_len = 128  # Tokens per packed training row.

    # Masked-LM pretraining (task='masked_lm'): BERT's dynamic masking in the input pipeline.
    c.mlm = ml_collections.ConfigDict()
    c.mlm.mask_rate = 0.15  # Share of maskable tokens selected for prediction.
    c.mlm.random_rate = 0.1  # Of the selected: replaced by a random token ...
    c.mlm.keep_rate = 0.1  # ... or kept; the rest become [MASK].
    c.mlm.whole_word = False  # Select whole words (SentencePiece word starts).
    c.mlm.sentence_pairs = False  # Rows of two segments [CLS] A [SEP] B [SEP] (segment ids 0/1).

    # Encoder-decoder tasks (task='span_corruption' or 'seq2seq', T5 family).
    c.seq2seq = ml_collections.ConfigDict()
    c.seq2seq.target_len = 0  # Decoder length; 0: seq_len (pairs) or T5's for span corruption.
    c.seq2seq.extra_ids = 100  # Sentinel ids above the tokenizer's pieces (model.vocab_size=0).
    c.seq2seq.noise_density = 0.15  # Span corruption: share of tokens in noise spans.
    c.seq2seq.mean_noise_span_length = 3.0  # Span corruption: mean noise span length.
    c.seq2seq.inputs_key = ""  # Text pairs: feature of the inputs; '': the dataset's.
    c.seq2seq.targets_key = ""  # Text pairs: feature of the targets; '': the dataset's.
    c.seq2seq.metrics = ""  # Eval text metrics, comma-separated (bleu, rouge, squad); '': by data.
    c.seq2seq.num_beams = 1  # Eval decoding: 1 greedy, more for beam search.

    # Extractive QA (task='extractive_qa'), SQuAD v1.1 style.
    c.qa = ml_collections.ConfigDict()
    c.qa.doc_stride = 128  # Context tokens between the starts of overlapping windows.
    c.qa.max_query_len = 64  # Question tokens kept.
    c.qa.max_answer_len = 30  # Longest predicted answer, in tokens.
    c.qa.n_best = 20  # Start/end candidates per window in post-processing.

    # Tokenizer.
    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.path = ""  # '': train one on the training split and cache it in the workdir.
    c.tokenizer.vocab_size = 8000  # Used only when training a tokenizer.
    c.tokenizer.model_type = "unigram"  # 'unigram' or 'bpe'.
    c.tokenizer.max_sentences = 200_000  # Documents read to train the tokenizer.

    # Optimisation.
    c.seed = 0
    c.total_steps = 1000
    c.per_device_batch_size = 8
    # Gradient accumulation: each device's batch runs as this many slices, one after the other,
    # summed into one update (the big batch's update with a slice's activation memory).
    c.num_microbatches = 1
    # Train steps per call of the compiled step: k > 1 runs k batches in one XLA execution (a
    # lax.scan of the same step), which dispatches less and on a CPU allocates the step's
    # working memory once per call (about 10% faster 'bench' GPT steps on a 2-core EPYC). Logs,
    # evals, checkpoints, samples and preemption stops still land on their exact steps.
    c.steps_per_execution = 1
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 3e-4  # Peak learning rate.
    c.optimizer.warmup_steps = 100
    c.optimizer.schedule = "cosine"  # 'cosine', 'linear' or 'constant' after warm-up.
    c.optimizer.end_learning_rate_fraction = 0.1  # Final rate as a fraction of the peak.
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.95
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.1
    c.optimizer.decay_embeddings = False  # Weight decay on token/position embeddings.
    c.optimizer.grad_clip_norm = 1.0  # 0: no clipping.

    # Loop, logging, checkpoints.
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 3
    c.sample_every_steps = 0  # Decode sample_prompts greedily into TensorBoard; 0: never.
    c.sample_prompts = ("",)  # "" samples from the start of a document.
    c.sample_max_new_tokens = 32
    c.init_checkpoint = ""  # A checkpoint directory to start from when the workdir has none.
    # Low-rank adapters (LoRA) on init_checkpoint's model: rank > 0 trains only the adapters
    # and the task's new head, the base frozen (no gradients, no optimizer state); checkpoints
    # hold those plus a reference to the base (ptjax.train.adaptation).
    c.finetune = ml_collections.ConfigDict()
    c.finetune.lora = ml_collections.ConfigDict()
    c.finetune.lora.rank = 0  # 0: full fine-tuning.
    c.finetune.lora.alpha = 16.0  # The adapters' product is scaled by alpha / rank.
    c.finetune.lora.dropout = 0.05  # On the adapters' input, in training.
    # Adapted projections, comma-separated: query, key, value, out, wi (wi_0, wi_1), wo.
    c.finetune.lora.targets = "query,value"
    # Input-pipeline positions belong to the process count that saved them. Resuming under
    # another count is refused unless this is True: then the train state resumes and each
    # process reads its new shard in a new order, drawn from (seed, step) and recorded.
    c.reshard_data_on_resume = False
    # Best-checkpoint tracking: an eval metric name (e.g. 'f1/spam', 'loss'); '' keeps none.
    c.best_metric = ""
    c.best_metric_mode = "max"  # 'max' or 'min'.
    # Accounting and profiling: train/mfu divides the model's FLOP/s by the devices' peak, from
    # ptjax.train.accounting's table (or measured on CPU) unless this is set (FLOP/s per device).
    c.peak_flops_per_device = 0.0
    c.profile_steps = 0  # Trace this many steps (after the first) into WORKDIR/profile; 0: none.
    c.parallelism = ml_collections.ConfigDict()
    # 'pmap': data parallel over the local devices, state replicated. 'mesh': jit on a
    # (data, fsdp, tensor) device mesh, parameters and optimizer state sharded by the rules of
    # ptjax/train/sharding.py; data x fsdp x tensor must equal the number of devices.
    c.parallelism.mode = "pmap"
    c.parallelism.data = -1  # -1: all devices not used by fsdp x tensor.
    c.parallelism.fsdp = 1
    c.parallelism.tensor = 1
    # Multi-slice (DCN) meshes: how many granules (TPU slices by the devices' slice_index;
    # elsewhere processes) the data and fsdp axes span. Each granule holds a (data / dcn_data,
    # fsdp / dcn_fsdp, tensor) block on its fast network; dcn_data x dcn_fsdp must equal the
    # number of granules (1 x 1: one block over every device, which multi-slice TPUs refuse).
    c.parallelism.dcn_data = 1
    c.parallelism.dcn_fsdp = 1

    # Reliability.
    # A step whose loss or gradients are NaN/inf never changes the parameters; 'stop' then ends
    # the run at the next log interval naming the step, 'skip' goes on and logs
    # train/skipped_steps.
    c.nonfinite_policy = "stop"
    # Multi-process runs: steps between agreements on a SIGTERM/SIGINT stop (one tiny
    # collective each); a single process checks every step for free.
    c.preemption_sync_every_steps = 10
    return c


_CHOICES = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.kernels": ("auto", "cpu", "xla"),
    "model.attention": ("auto", "xla", "cudnn", "splash"),
    "model.tie_embeddings": ("", "true", "false"),
    "model.qkv_bias": ("", "true", "false"),
    "model.remat": ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable"),
    "dataset.document_per": ("line", "file"),
    "tokenizer.model_type": ("unigram", "bpe"),
    "optimizer.schedule": ("cosine", "linear", "constant"),
    "parallelism.mode": ("pmap", "mesh"),
    "nonfinite_policy": ("stop", "skip"),
    "best_metric_mode": ("max", "min"),
}

_INT_MAX = 2**31 - 1  # Steps, sizes and ids are int32 on the device.
# Valid ranges of numeric keys: (low, high) and which ends are included; floats must be finite.
_RANGES = {
    "seed": (0, _INT_MAX, "[]"),
    "seq_len": (1, _INT_MAX, "[]"),
    "total_steps": (1, _INT_MAX, "[]"),
    "per_device_batch_size": (1, _INT_MAX, "[]"),
    "num_microbatches": (1, _INT_MAX, "[]"),
    "steps_per_execution": (1, _INT_MAX, "[]"),
    "log_every_steps": (1, _INT_MAX, "[]"),
    "eval_every_steps": (1, _INT_MAX, "[]"),
    "checkpoint_every_steps": (1, _INT_MAX, "[]"),
    "keep_checkpoints": (1, _INT_MAX, "[]"),
    "sample_every_steps": (0, _INT_MAX, "[]"),
    "sample_max_new_tokens": (1, _INT_MAX, "[]"),
    "preemption_sync_every_steps": (1, _INT_MAX, "[]"),
    "parallelism.data": (-1, _INT_MAX, "[]"),
    "parallelism.fsdp": (1, _INT_MAX, "[]"),
    "parallelism.tensor": (1, _INT_MAX, "[]"),
    "parallelism.dcn_data": (1, _INT_MAX, "[]"),
    "parallelism.dcn_fsdp": (1, _INT_MAX, "[]"),
    "profile_steps": (0, _INT_MAX, "[]"),
    "peak_flops_per_device": (0.0, math.inf, "[)"),
    "finetune.lora.rank": (0, 1 << 16, "[]"),
    "finetune.lora.alpha": (0.0, math.inf, "()"),
    "finetune.lora.dropout": (0.0, 1.0, "[)"),
    "model.vocab_size": (0, _INT_MAX, "[]"),
    "model.max_len": (0, _INT_MAX, "[]"),
    "model.num_labels": (0, _INT_MAX, "[]"),
    "model.type_vocab_size": (0, _INT_MAX, "[]"),
    "model.num_layers": (0, 4096, "[]"),
    "model.d_model": (0, 1 << 20, "[]"),
    "model.num_heads": (0, 4096, "[]"),
    "model.d_ff": (0, 1 << 22, "[]"),
    "model.d_kv": (0, 1 << 16, "[]"),
    "model.num_decoder_layers": (0, 4096, "[]"),
    "model.num_kv_heads": (0, 4096, "[]"),
    "model.rope_theta": (0.0, math.inf, "[)"),
    "model.norm_eps": (0.0, 1.0, "[)"),
    "mlm.mask_rate": (0.0, 1.0, "[]"),
    "mlm.random_rate": (0.0, 1.0, "[]"),
    "mlm.keep_rate": (0.0, 1.0, "[]"),
    "seq2seq.target_len": (0, _INT_MAX, "[]"),
    "seq2seq.extra_ids": (0, _INT_MAX, "[]"),
    "seq2seq.noise_density": (0.0, 1.0, "()"),
    "seq2seq.mean_noise_span_length": (1.0, math.inf, "[)"),
    "seq2seq.num_beams": (1, 64, "[]"),
    "qa.doc_stride": (1, _INT_MAX, "[]"),
    "qa.max_query_len": (1, _INT_MAX, "[]"),
    "qa.max_answer_len": (1, _INT_MAX, "[]"),
    "qa.n_best": (1, _INT_MAX, "[]"),
    "dataset.shuffle_buffer": (1, _INT_MAX, "[]"),
    "dataset.max_eval_batches": (0, _INT_MAX, "[]"),
    "tokenizer.vocab_size": (261, _INT_MAX, "[]"),  # > 4 special ids + 256 byte pieces.
    "tokenizer.max_sentences": (1, _INT_MAX, "[]"),
    "optimizer.learning_rate": (0.0, math.inf, "()"),
    "optimizer.warmup_steps": (0, _INT_MAX, "[]"),
    "optimizer.end_learning_rate_fraction": (0.0, 1.0, "[]"),
    "optimizer.b1": (0.0, 1.0, "[)"),
    "optimizer.b2": (0.0, 1.0, "[)"),
    "optimizer.eps": (0.0, math.inf, "()"),
    "optimizer.weight_decay": (0.0, math.inf, "[)"),
    "optimizer.grad_clip_norm": (0.0, math.inf, "[)"),
}


def _check_range(key: str, value: float, bounds: tuple) -> None:
    """Raises ConfigError naming `key` and its valid range when `value` lies outside it."""
    low, high, ends = bounds
    above = low <= value if ends[0] == "[" else low < value
    below = value <= high if ends[1] == "]" else value < high
    if not (math.isfinite(value) and above and below):
        raise ConfigError(
            f"Config key {key!r} is {value!r}; it must lie in {ends[0]}{low}, {high}{ends[1]}."
        )


def _flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def check_override_flags(argv: list[str], flag: str = "config") -> None:
    """Names an unknown `--config.KEY=VALUE` override (with close matches) before flag parsing."""
    known = _flatten(base_config())
    prefix = f"--{flag}."
    for arg in argv[1:]:
        if not arg.startswith(prefix):
            continue
        key = arg[len(prefix) :].split("=", 1)[0]
        if key not in known and not any(k.startswith(key + ".") for k in known):
            close = difflib.get_close_matches(key, list(known), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"Unknown config key {key!r} in {arg!r}.{hint}")


def check_schema(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first key that does not fit the schema (ptjax.run.validate
    adds the checks against the model and task registries)."""
    expected = _flatten(base_config())
    given = _flatten(config)
    for key in sorted(set(given) - set(expected)):
        raise ConfigError(f"Unknown config key {key!r}. Known keys: {', '.join(sorted(expected))}.")
    for key in sorted(set(expected) - set(given)):
        raise ConfigError(f"Config key {key!r} is missing; start config files from base_config().")
    for key, default in expected.items():
        value = given[key]
        want = type(default)
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ConfigError(
                f"Config key {key!r} must be {want.__name__}, got {type(value).__name__} {value!r}."
            )
    for key, choices in _CHOICES.items():
        if given[key] not in choices:
            raise ConfigError(f"Config key {key!r} is {given[key]!r}; expected one of {choices}.")
    for key, bounds in _RANGES.items():
        _check_range(key, given[key], bounds)
    for key, value in given.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"Config key {key!r} is {value!r}; it must be a finite number.")
    if not (config.model.dropout_rate == -1.0 or 0.0 <= config.model.dropout_rate < 1.0):
        raise ConfigError(
            f"Config key model.dropout_rate={config.model.dropout_rate!r} must be -1 (the size's "
            "value) or lie in [0, 1)."
        )
    rate = config.model.attention_dropout_rate
    if not (rate == -1.0 or 0.0 <= rate < 1.0):
        raise ConfigError(
            f"Config key model.attention_dropout_rate={rate!r} must be -1 (model.dropout_rate) "
            "or lie in [0, 1)."
        )
    if not all(isinstance(p, str) for p in config.sample_prompts):
        raise ConfigError("Config key sample_prompts must be a tuple of strings.")
    if not 0.0 <= config.optimizer.end_learning_rate_fraction <= 1.0:
        raise ConfigError("Config key optimizer.end_learning_rate_fraction must lie in [0, 1].")
    if config.per_device_batch_size % config.num_microbatches:
        raise ConfigError(
            f"Config key num_microbatches={config.num_microbatches} must divide "
            f"per_device_batch_size={config.per_device_batch_size}: each device's batch is cut "
            "into that many equal slices."
        )
    if config.parallelism.data == 0:
        raise ConfigError(
            "Config key parallelism.data=0: set the data axis size, or -1 for the devices left."
        )
    if config.optimizer.warmup_steps > config.total_steps:
        raise ConfigError(
            f"Config key optimizer.warmup_steps={config.optimizer.warmup_steps} must lie in "
            f"[0, total_steps={config.total_steps}]."
        )
    if config.mlm.random_rate + config.mlm.keep_rate > 1.0:
        raise ConfigError(
            f"Config keys mlm.random_rate={config.mlm.random_rate} + mlm.keep_rate="
            f"{config.mlm.keep_rate} exceed 1: they are shares of the selected tokens."
        )
    if config.dataset.name == "text_files" and not config.dataset.train_files:
        raise ConfigError("dataset.name='text_files' needs dataset.train_files (paths or globs).")


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run was trained with (WORKDIR/config.json), on today's schema.

    Keys added to the schema since the run started take their defaults; keys the schema no
    longer has are dropped. Tuples saved as JSON lists become tuples again.
    """
    import json
    import os

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir!r} is not a ptjax run directory.")
    with open(path) as f:
        saved = json.load(f)
    config = base_config()
    schema = _flatten(config)

    def put(tree: dict, prefix: str = "") -> None:
        for key, value in tree.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                put(value, name + ".")
            elif name in schema:
                if isinstance(schema[name], tuple):
                    value = tuple(value)
                node = config
                *parents, leaf = name.split(".")
                for parent in parents:
                    node = node[parent]
                node[leaf] = value

    put(saved)
    return config
