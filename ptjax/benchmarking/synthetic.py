"""The synthetic token batches and prompts both sides are fed: the same seed gives the same rows
in each worker, so ptjax and the baseline train or decode on identical inputs."""

from __future__ import annotations

from typing import Any

from ptjax.benchmarking.options import Options


def synthetic_rows(opts: Options, rows: int, vocab_size: int, seed: int) -> dict[str, Any]:
    """Packed rows like the LM pipeline's: [rows, seq_len] inputs, targets, segments, positions."""
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab_size, (rows, opts.seq_len + 1), dtype=np.int32)
    segment_ids = np.zeros((rows, opts.seq_len), np.int32)
    positions = np.zeros((rows, opts.seq_len), np.int32)
    for row in range(rows):
        start, segment = 0, 1
        while start < opts.seq_len:  # Documents of 16 tokens up to a whole row.
            length = int(rng.integers(16, opts.seq_len + 1))
            end = min(start + length, opts.seq_len)
            segment_ids[row, start:end] = segment
            positions[row, start:end] = np.arange(end - start)
            start, segment = end, segment + 1
    return dict(
        inputs=tokens[:, :-1],
        targets=tokens[:, 1:],
        segment_ids=segment_ids,
        positions=positions,
        weights=np.ones((rows, opts.seq_len), np.float32),
    )


MLM_PREDICTED_FRACTION = 0.15  # Share of tokens masked (and predicted) in BERT batches.


def synthetic_mlm_rows(opts: Options, rows: int, vocab_size: int, seed: int) -> dict[str, Any]:
    """Masked-LM rows like the encoder pipeline's: [CLS] tokens [SEP], 15% selected, 80% of
    those [MASK]ed; the rest of the vocabulary above the special ids (pad 0 ... [MASK] 6)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    length = opts.seq_len
    targets = rng.integers(7, vocab_size, (rows, length), dtype=np.int32)
    targets[:, 0], targets[:, -1] = 4, 5  # [CLS], [SEP]
    weights = np.zeros((rows, length), np.float32)
    selected = round(MLM_PREDICTED_FRACTION * (length - 2))
    for row in range(rows):
        weights[row, 1 + rng.choice(length - 2, selected, replace=False)] = 1.0
    masked = (weights > 0) & (rng.random((rows, length)) < 0.8)
    return dict(
        input_ids=np.where(masked, 6, targets).astype(np.int32),
        targets=targets,
        weights=weights,
        token_type_ids=np.zeros((rows, length), np.int32),
        attention_mask=np.ones((rows, length), np.int32),
    )


def synthetic_seq2seq_rows(opts: Options, rows: int, vocab_size: int, seed: int) -> dict[str, Any]:
    """T5 rows like the seq2seq pipeline's, one full-length example per row: inputs and targets
    of seq_len tokens above pad 0 / eos 1, decoder inputs the targets shifted right."""
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (rows, opts.seq_len)
    inputs = rng.integers(2, vocab_size, shape, dtype=np.int32)
    targets = rng.integers(2, vocab_size, shape, dtype=np.int32)
    ones = np.ones(shape, np.int32)
    positions = np.broadcast_to(np.arange(opts.seq_len, dtype=np.int32), shape).copy()
    return dict(
        encoder_input_tokens=inputs,
        encoder_segment_ids=ones,
        encoder_positions=positions,
        decoder_input_tokens=np.concatenate([np.zeros((rows, 1), np.int32), targets[:, :-1]], 1),
        decoder_target_tokens=targets,
        decoder_segment_ids=ones,
        decoder_positions=positions,
        decoder_loss_weights=np.ones(shape, np.float32),
    )


SYNTHETIC_ROWS = {
    "gpt": synthetic_rows,
    "bert": synthetic_mlm_rows,
    "t5": synthetic_seq2seq_rows,
}


def synthetic_prompts(opts: Options, rows: int, vocab_size: int, seed: int) -> Any:
    """[rows, prompt_len] random token ids (no padding: every prompt is full length)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(3, vocab_size, (rows, opts.prompt_len), dtype=np.int32)
