"""Text in, text out: a trained model and its tokenizer behind one `generate` call.

from ptjax.run import Run
gen = Run.open("runs/demo").generator()          # or Generator(model, params, tokenizer, ...)
print(gen.generate(["In the beginning"], max_new_tokens=40, temperature=0.8, top_p=0.9))

A causal LM (GPT) continues each prompt, which starts a new document (EOS, then its pieces). An
encoder-decoder (T5) reads each prompt as its encoder input (its pieces, then EOS, as the seq2seq
pipeline makes them) and writes the output text; a run fine-tuned on a dataset with an inputs
prefix ("translate English to Spanish: ", "summarize: ") gets it put before every prompt that
lacks it (`input_prefix`), as in training.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from ptjax import backend, models, placement
from ptjax.data.tokenizer import Tokenizer, check_vocab
from ptjax.decoding.search import DecodeConfig, beam_search, sample
from ptjax.models import attention

_PROMPT_BUCKET = 16  # Prompt widths are rounded up to a multiple of this to reuse compilations.


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, width: int) -> tuple[np.ndarray, ...]:
    """Token lists -> (tokens [batch, width], mask [batch, width]) aligned to the right edge."""
    tokens = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        if row:
            tokens[i, width - len(row) :] = row
            mask[i, width - len(row) :] = True
    return tokens, mask


class Generator:
    """Decodes a causal LM or an encoder-decoder over all local devices (the batch is split
    between them), or, given a `mesh`, on every device of it with the parameters as they are
    sharded there (every process calls it with the same prompts, as a training run's samples
    do; the prompts are replicated, the results come back to each process)."""

    def __init__(
        self,
        model: Any,
        params: Any,
        tokenizer: Tokenizer,
        family: models.ModelFamily,
        devices: Sequence[Any] | None = None,
        input_prefix: str = "",
        mesh: jax.sharding.Mesh | None = None,
        kernels: str = "auto",
        attention_setting: str = "auto",
    ):
        self.model = model
        self.family = family
        # T5's prompts are encoder inputs, not a text to continue.
        self.encoder_decoder = family.encoder_decoder
        self.input_prefix = input_prefix
        self.tokenizer = tokenizer
        self.params = params
        if not self.encoder_decoder:
            check_vocab(tokenizer, model.config.vocab_size)
        elif tokenizer.vocab_size > model.config.vocab_size:  # T5 may hold sentinels beyond.
            raise ValueError(
                f"Tokenizer {getattr(tokenizer, 'path', '')!r} has {tokenizer.vocab_size} pieces, "
                f"more than the model's vocab_size={model.config.vocab_size}; use the run's own "
                "tokenizer."
            )
        self._mesh = mesh
        self._devices = list(devices or jax.local_devices())
        on = list(mesh.devices.flat) if mesh is not None else self._devices
        self.forms = backend.resolve(kernels, on)  # What the decoding loop is traced with.
        # Its attention: the kernel for what has no cache (T5's encoder); every device of a
        # mesh runs it on the whole (replicated) batch of prompts.
        kernel = attention.choose(attention_setting, on).kernel
        self.attention = attention.Choice(kernel, mesh)
        self._replicated = None

    def set_params(self, params: Any) -> None:
        """Swaps in new parameters of the same shapes (no recompilation)."""
        self.params = params
        self._replicated = None

    def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        """A causal LM's prompts as new documents (the token documents start with: EOS, GPT-2's
        separator, or BOS where the tokenizer frames documents with it, then the pieces); an
        encoder-decoder's as encoder inputs (input_prefix, pieces, EOS)."""
        if self.encoder_decoder:
            prefix = self.input_prefix
            texts = [p if p.startswith(prefix) else prefix + p for p in prompts]
            return [ids + [self.tokenizer.eos_id] for ids in self.tokenizer.encode_batch(texts)]
        tok = self.tokenizer
        start = tok.bos_id if tok.bos_documents else tok.eos_id
        return [[start] + ids for ids in tok.encode_batch(prompts)]

    def generate_ids(
        self, prompt_ids: Sequence[Sequence[int]], cfg: DecodeConfig, seed: int = 0
    ) -> list[list[int]]:
        """New token ids per prompt (up to and without the EOS)."""
        if not prompt_ids:
            return []
        longest = max(len(p) for p in prompt_ids)
        if longest == 0:
            raise ValueError("Every prompt is empty; give at least one token.")
        max_len = self.model.config.max_len
        if self.encoder_decoder and max(longest, cfg.max_new_tokens) > max_len:
            raise ValueError(
                f"An input of {longest} tokens or max_new_tokens={cfg.max_new_tokens} exceeds "
                f"the model's limit of {max_len} positions."
            )
        if not self.encoder_decoder and longest + cfg.max_new_tokens > max_len:
            raise ValueError(
                f"A prompt of {longest} tokens plus max_new_tokens={cfg.max_new_tokens} exceeds "
                f"the model's {self.model.config.max_len} positions."
            )
        width = -(-longest // _PROMPT_BUCKET) * _PROMPT_BUCKET
        # On a mesh one program takes the whole batch; else it is split over local devices.
        n_dev = 1 if self._mesh is not None else min(len(self._devices), len(prompt_ids))
        per_device = -(-len(prompt_ids) // n_dev)
        rows = list(prompt_ids) + [[self.tokenizer.eos_id]] * (n_dev * per_device - len(prompt_ids))
        tokens, mask = left_pad(rows, self.tokenizer.pad_id, width)
        shape = (n_dev, per_device, width)
        out, lengths = self._decode_fn(cfg, n_dev)(
            self._params_on(n_dev),
            tokens.reshape(shape),
            mask.reshape(shape),
            jax.random.split(jax.random.PRNGKey(seed), n_dev),
        )
        out = np.asarray(out).reshape(n_dev * per_device, -1)
        lengths = np.asarray(lengths).reshape(-1)
        result = []
        for row, n in zip(out[: len(prompt_ids)], lengths[: len(prompt_ids)], strict=True):
            ids = row[:n].tolist()
            if ids and ids[-1] == self.tokenizer.eos_id:
                ids = ids[:-1]
            result.append(ids)
        return result

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        seed: int = 0,
    ) -> list[str]:
        """Completions of `prompts` (without the prompt text)."""
        cfg = DecodeConfig(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            num_beams=num_beams,
            length_penalty=length_penalty,
            eos_id=self.tokenizer.eos_id,
            pad_id=self.tokenizer.pad_id,
        )
        ids = self.generate_ids(self.encode_prompts(prompts), cfg, seed)
        pieces = self.tokenizer.vocab_size  # T5's sentinel ids above the pieces have no text.
        return [self.tokenizer.decode([t for t in row if t < pieces]) for row in ids]

    def _params_on(self, n_dev: int) -> Any:
        """The parameters as decoding reads them (`family.decode_params`), on the first n_dev
        devices: prepared and copied there once, not at every call."""
        if self._replicated is None or self._replicated[0] != n_dev:
            prepared = jax.jit(self.family.decode_params)(self.params)
            if self._mesh is None:
                prepared = placement.replicate(prepared, self._devices[:n_dev])
            self._replicated = (n_dev, prepared)  # On a mesh: sharded as the params are.
        return self._replicated[1]

    @functools.lru_cache(maxsize=16)  # noqa: B019 - one Generator per model; few settings.
    def _decode_fn(self, cfg: DecodeConfig, n_dev: int) -> Any:
        prefill, step = self.family.decode_fns(self.model, cfg.max_new_tokens)

        def run(params, tokens, mask, rng):  # params: prepared by _params_on.
            if cfg.num_beams > 1:
                best, lengths, _ = beam_search(prefill, step, params, tokens, mask, cfg)
                return best, lengths
            return sample(prefill, step, params, tokens, mask, rng, cfg)

        run = attention.traced_with(self.attention, backend.traced_with(self.forms, run))

        if self._mesh is not None:  # One program over the mesh: the same on every process.
            replicated = jax.sharding.NamedSharding(self._mesh, jax.sharding.PartitionSpec())
            jitted = jax.jit(run, out_shardings=replicated)

            def on_mesh(p: Any, t: Any, m: Any, r: Any) -> Any:
                put = lambda x: jax.make_array_from_process_local_data(  # noqa: E731
                    replicated, np.asarray(x[0])
                )
                out = jitted(p, put(t), put(m), put(r))
                return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[None], out)

            return on_mesh
        if n_dev == 1:  # Plain jit: also right for one process of a multi-host run.
            jitted = jax.jit(run)
            return lambda p, t, m, r: jax.tree.map(
                lambda x: x[None], jitted(jax.tree.map(lambda x: x[0], p), t[0], m[0], r[0])
            )
        return jax.pmap(run, devices=self._devices[:n_dev])
