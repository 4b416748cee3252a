"""Answer questions from a context with a fine-tuned extractive-QA run, as Hugging Face's
question-answering pipeline does.

    from ptjax import QuestionAnswerer
    answer = QuestionAnswerer.from_workdir("runs/qa", checkpoint="best")
    answer(question="Who created the heavens?", context="In the beginning God created ...")
    # {'answer': 'God', 'score': 7.3, 'start': 17, 'end': 20}

The context is windowed, scored and post-processed exactly as in evaluation (the run's
seq_len, doc_stride, max_query_len, n_best and max_answer_len); `score` is the best span's
start + end logit, and `start`/`end` are character offsets into the context.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

from ptjax.data.tokenizer import Tokenizer, check_vocab
from ptjax.run import Run
from ptjax.tasks.extractive_qa import ExtractiveQA


class QuestionAnswerer:
    """An extractive-QA model, its tokenizer and windowing settings behind one call."""

    def __init__(self, model: Any, params: Any, tokenizer: Tokenizer, config: Any):
        check_vocab(tokenizer, model.config.vocab_size)
        self.model, self.params, self.tokenizer, self.config = model, params, tokenizer, config
        self._logits = jax.jit(functools.partial(model.apply, deterministic=True))

    @classmethod
    def from_workdir(cls, workdir: str, checkpoint: str = "latest") -> QuestionAnswerer:
        """The run's model at `checkpoint` ('latest', 'best', a step or a step directory)."""
        run = Run.open(workdir)
        if not issubclass(run.task, ExtractiveQA):
            raise ValueError(
                f"{workdir!r} holds a {run.config.task!r} run, not an extractive_qa one."
            )
        model, _ = run.build()
        return cls(model, run.restore_params(model, checkpoint), run.tokenizer, run.config)

    def __call__(self, *, question: str, context: str) -> dict[str, Any]:
        """The best answer span: {'answer', 'score', 'start', 'end'} ('' and None if none)."""
        from ptjax.data import qa
        from ptjax.evaluation import qa_postprocess

        cfg = self.config
        example = qa.QAExample("0", question, context, (), ())
        features = qa.example_features(
            example,
            0,
            self.tokenizer,
            seq_len=cfg.seq_len,
            max_query_len=cfg.qa.max_query_len,
            doc_stride=cfg.qa.doc_stride,
        )
        ids = np.zeros((len(features), cfg.seq_len), np.int32)  # [windows, seq_len]
        types = np.zeros_like(ids)
        for i, feature in enumerate(features):
            ids[i, : len(feature.input_ids)] = feature.input_ids
            types[i, : len(feature.input_ids)] = feature.token_type_ids
        mask = (ids != self.tokenizer.pad_id).astype(np.int32)
        start, end = self._logits({"params": self.params}, ids, types, mask)
        start, end = np.asarray(start), np.asarray(end)
        best = None
        for i, feature in enumerate(features):
            span = qa_postprocess.best_span(
                feature,
                start[i],
                end[i],
                n_best=cfg.qa.n_best,
                max_answer_len=cfg.qa.max_answer_len,
            )
            if span is not None and (best is None or span[0] > best[0]):
                best = (span[0], i, span[1], span[2])
        if best is None:
            return {"answer": "", "score": None, "start": None, "end": None}
        score, i, s, e = best
        begin, finish = int(features[i].offsets[s, 0]), int(features[i].offsets[e, 1])
        return {"answer": context[begin:finish], "score": score, "start": begin, "end": finish}
