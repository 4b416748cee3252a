"""Encoder-decoder tasks of the T5 family: span-corruption pretraining and text-to-text
fine-tuning (translation, summarization, generative QA).

Both train the decoder's next-token cross-entropy over real target tokens (packed examples are
kept apart by segment ids and per-example positions); they differ in their input pipelines
(`ptjax.data.seq2seq_pipeline`). Eval reports loss, token accuracy and perplexity over the
whole eval split; `seq2seq` also decodes every eval example greedily (the KV-cached loop of
`ptjax.decoding`; beam search with seq2seq.num_beams > 1) and scores the texts with the run's
text metrics (`ptjax.evaluation.text_metrics`: sacrebleu's corpus BLEU, ROUGE, SQuAD EM/F1),
summing their sufficient statistics across processes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ptjax.data import datasets  # The registry: no TensorFlow.
from ptjax.tasks import losses
from ptjax.tasks.base import Task, spec

if TYPE_CHECKING:
    from ptjax.train.parallel import Parallel


def _loss(
    model: nn.Module, params: Any, batch: dict, *, rng: jax.Array, train: bool
) -> tuple[jax.Array, dict[str, jax.Array]]:
    encoder_segments = batch["encoder_segment_ids"]  # [batch, src_len], 0 on padding
    decoder_segments = batch["decoder_segment_ids"]  # [batch, tgt_len]
    hidden, output = model.apply(
        {"params": params},
        batch["encoder_input_tokens"],
        batch["decoder_input_tokens"],
        encoder_segments > 0,
        decoder_segments > 0,
        encoder_segment_ids=encoder_segments,
        decoder_segment_ids=decoder_segments,
        encoder_positions=batch["encoder_positions"],
        decoder_positions=batch["decoder_positions"],
        deterministic=not train,
        rngs={"dropout": rng} if train else None,
        return_hidden=True,
    )  # [batch, tgt_len, d_model], [vocab, d_model]: the logits' factors
    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    # The [tokens, vocab] logits made once, in float32, the target's gathered (GPT's loss).
    token_loss, correct = losses.output_cross_entropy(hidden, output, targets)
    loss_sum = jnp.sum(token_loss * weights)
    return loss_sum, {
        "loss_sum": loss_sum,
        "correct": jnp.sum(correct * weights),
        "weight": jnp.sum(weights),
        "tokens": jnp.sum(encoder_segments > 0).astype(jnp.float32) + jnp.sum(weights),
    }


def _summarize(sums: dict[str, Any]) -> dict[str, float]:
    weight = max(float(sums["weight"]), 1.0)
    loss = float(sums["loss_sum"]) / weight
    return {
        "loss": loss,
        "accuracy": float(sums["correct"]) / weight,
        "perplexity": math.exp(min(loss, 50.0)),
    }


def _t5_batch_spec(rows: int, src_len: int, tgt_len: int) -> dict[str, Any]:
    out = {}
    for side, n in (("encoder", src_len), ("decoder", tgt_len)):
        for key in ("input_tokens", "segment_ids", "positions"):
            out[f"{side}_{key}"] = spec(rows, n)
    out["decoder_target_tokens"] = spec(rows, tgt_len)
    out["decoder_loss_weights"] = spec(rows, tgt_len, dtype=float)
    return out


class SpanCorruption(Task):
    """T5 pretraining: predict the corrupted spans (sentinel + tokens) from the rest."""

    name = "span_corruption"
    families = ("t5",)
    weights_key = "decoder_loss_weights"  # The batch key the train step normalises by.

    def batch_spec(self, config: ml_collections.ConfigDict, rows: int) -> dict[str, Any]:
        from ptjax.data import span_pipeline  # Only for its length rules.

        _, src_len, tgt_len = span_pipeline.span_corruption_lengths(config)
        return _t5_batch_spec(rows, src_len, tgt_len)

    def train_batches(self, config, tokenizer, **kwargs) -> Any:
        from ptjax.data import span_pipeline

        return span_pipeline.span_corruption_train_batches(config, tokenizer, **kwargs)

    def eval_batches(self, config, tokenizer, **kwargs) -> Any:
        from ptjax.data import span_pipeline

        return span_pipeline.span_corruption_eval_batches(config, tokenizer, **kwargs)

    loss = staticmethod(_loss)
    summarize = staticmethod(_summarize)

    def metric_names(self) -> tuple[str, ...]:
        return ("loss", "accuracy", "perplexity")


class Seq2Seq(SpanCorruption):
    """Text-to-text fine-tuning on (inputs, targets) pairs: translation, summarization, QA."""

    name = "seq2seq"

    def batch_spec(self, config: ml_collections.ConfigDict, rows: int) -> dict[str, Any]:
        from ptjax.data import seq2seq_pipeline  # Only for its length rules.

        return _t5_batch_spec(rows, *seq2seq_pipeline.seq2seq_lengths(config))

    def input_prefix(self, config: ml_collections.ConfigDict) -> str:
        """The dataset's known prefix; none for chosen fields or QA ("question: ... context:
        ..." inputs)."""
        known = datasets.facts(config.dataset.name)
        if config.seq2seq.inputs_key or known.qa or known.pair is None:
            return ""
        return known.pair.prefix

    def train_batches(self, config, tokenizer, **kwargs) -> Any:
        from ptjax.data import seq2seq_pipeline

        return seq2seq_pipeline.seq2seq_train_batches(config, tokenizer, **kwargs)

    def eval_batches(self, config, tokenizer, **kwargs) -> Any:
        from ptjax.data import seq2seq_pipeline

        return seq2seq_pipeline.seq2seq_eval_batches(config, tokenizer, **kwargs)

    def tokenizer_texts(self, config, *, data_dir: str, max_texts: int) -> Any:
        """A new run's tokenizer learns both sides of the pairs (both languages)."""
        from ptjax.data import seq2seq_pipeline

        return seq2seq_pipeline.pair_texts(config, data_dir=data_dir, max_texts=max_texts)


def decoded_metrics(config) -> tuple[str, ...]:
    """The text metrics (keys of text_metrics.METRICS) of config's seq2seq run: seq2seq.metrics,
    comma-separated, or by dataset when it is '' (summarization: rouge; QA: squad; else bleu)."""
    from ptjax import config as config_lib
    from ptjax.evaluation import text_metrics

    chosen = config.seq2seq.metrics
    if not chosen:
        return datasets.default_metrics(config.dataset.name)
    names = tuple(n.strip() for n in chosen.split(",") if n.strip())
    unknown = [n for n in names if n not in text_metrics.METRICS]
    if unknown or not names or len(set(names)) != len(names):
        raise config_lib.ConfigError(
            f"Config key seq2seq.metrics={chosen!r}: give distinct names of "
            f"{', '.join(text_metrics.METRICS)}, comma-separated ('' picks by dataset)."
        )
    return names


class Seq2SeqWithDecoding(Seq2Seq):
    """`seq2seq` with decoding: eval decodes every example of the split (greedy, or beam search
    with seq2seq.num_beams > 1) and scores the texts against the references with the run's
    text metrics (`decoded_metrics`: BLEU, ROUGE, SQuAD EM/F1), sums added across processes."""

    def __init__(self) -> None:
        self._decode_cache: dict[tuple, Any] = {}
        self._metrics: tuple[str, ...] = ("bleu",)

    def setup(self, config, *, data_dir: str) -> dict[str, Any]:
        del data_dir
        self._metrics = decoded_metrics(config)
        return {}

    def metric_names(self) -> tuple[str, ...]:
        from ptjax.evaluation import text_metrics

        names = [n for m in self._metrics for n in text_metrics.METRICS[m].names]
        return ("loss", "accuracy", "perplexity", *names)

    def _decoder(
        self, par: Parallel, model: nn.Module, max_new_tokens: int, eos_id: int, beams: int
    ) -> Any:
        """(params, batch) -> (loss sums, (new tokens, lengths)) under the run's parallel mode
        (`Parallel.predict_step`), compiled once."""
        key = (id(par), id(model), max_new_tokens, eos_id, beams)
        if key not in self._decode_cache:
            from ptjax.decoding.search import DecodeConfig, beam_search, sample
            from ptjax.models import t5_decoding

            cfg = DecodeConfig(
                max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=0, num_beams=beams
            )
            prefill, step = t5_decoding.decode_fns(model, max_new_tokens)

            def run(params, batch):
                _, sums = _loss(model, params, batch, rng=None, train=False)
                tokens = batch["encoder_input_tokens"]
                mask = batch["encoder_segment_ids"] > 0
                params = t5_decoding.prepare_decode_params(params)  # Scanned layers unstacked once.
                if beams > 1:
                    new, lengths, _ = beam_search(prefill, step, params, tokens, mask, cfg)
                else:
                    new, lengths = sample(
                        prefill, step, params, tokens, mask, jax.random.PRNGKey(0), cfg
                    )
                return sums, (new, lengths)

            self._decode_cache[key] = par.predict_step(run)
        return self._decode_cache[key]

    def run_eval(
        self, model, params, config, tokenizer, *, par, data_dir, process_index, process_count,
        local_device_count,
    ) -> tuple[dict[str, float], dict[str, Any]]:  # fmt: skip
        """(metrics, details) over the whole eval split; `params` as `par` (the run's
        `ptjax.train.parallel.Parallel`) places them."""
        import numpy as np
        from jax.experimental import multihost_utils

        from ptjax.data import seq2seq_pipeline
        from ptjax.evaluation import text_metrics

        kwargs = dict(
            data_dir=data_dir,
            process_index=process_index,
            process_count=process_count,
            local_device_count=local_device_count,
        )
        _, targets_len = seq2seq_pipeline.seq2seq_lengths(config)
        beams = config.seq2seq.num_beams
        run = self._decoder(par, model, targets_len, tokenizer.eos_id, beams)
        total, rows = None, []
        for batch in seq2seq_pipeline.seq2seq_eval_batches(config, tokenizer, **kwargs):
            sums, (new, lengths) = run(params, batch)  # This process's rows, on the host.
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
            rows += [r[:n].tolist() for r, n in zip(new.reshape(-1, new.shape[-1]),
                                                     lengths.reshape(-1), strict=True)]  # fmt: skip
        metrics = _summarize(jax.tree.map(lambda x: np.asarray(x)[0], jax.device_get(total)))
        references = seq2seq_pipeline.seq2seq_eval_references(config, **kwargs)
        pieces = tokenizer.vocab_size  # Sentinel ids above the pieces decode to nothing.
        predictions = [
            tokenizer.decode([t for t in row if t < pieces and t != tokenizer.eos_id])
            for row in rows[: len(references)]
        ]
        for name in self._metrics:
            metric = text_metrics.METRICS[name]
            sums = metric.sums(predictions, references)
            if process_count > 1:
                sums = np.sum(multihost_utils.process_allgather(sums), axis=0)
            metrics.update(metric.scores(sums))
        sample_pairs = [
            {"prediction": p, "references": r}
            for p, r in zip(predictions[:10], references[:10], strict=True)
        ]
        return metrics, {"samples": sample_pairs}
