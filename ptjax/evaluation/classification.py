"""Classification metrics from a confusion matrix, the statistic that sums across batches/devices.

`confusion_matrix` is jit-able and weighted (weight 0 for padded examples), so each device can
compute its own and the trainer adds them up (`psum` or a host-side sum); `scores` turns the
total into accuracy, per-class precision/recall/F1, macro F1 and Matthews correlation. Conventions
(scikit-learn's with zero_division=0): a class never predicted has precision 0, a class with no
true example has recall 0, F1 is 0 when precision + recall is 0, and with no examples at all
every score is 0. Macro averages run over the classes that occur in the labels or predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(
    labels: Any, predictions: Any, num_classes: int, weights: Any = None
) -> jax.Array:
    """[num_classes, num_classes] float32: rows are true labels, columns predictions.

    `labels`, `predictions` and `weights` share any shape; an id outside [0, num_classes), e.g.
    -1 for padding, contributes nothing, as does weight 0.
    """
    true = jax.nn.one_hot(jnp.ravel(jnp.asarray(labels, jnp.int32)), num_classes)  # [n, classes]
    pred = jax.nn.one_hot(jnp.ravel(jnp.asarray(predictions, jnp.int32)), num_classes)
    w = (
        jnp.ones(true.shape[:1])
        if weights is None
        else jnp.ravel(jnp.asarray(weights, jnp.float32))
    )
    return jnp.einsum("n,nc,nd->cd", w, true, pred)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def per_class(cm: Any) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support (true count), each [num_classes]."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def matthews_corrcoef(cm: Any) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K, as scikit-learn); 0 when undefined."""
    cm = np.asarray(cm, np.float64)
    true, pred = cm.sum(axis=1), cm.sum(axis=0)
    total, correct = cm.sum(), np.trace(cm)
    den = np.sqrt((total**2 - pred @ pred) * (total**2 - true @ true))
    return float((correct * total - true @ pred) / den) if den > 0 else 0.0


def scores(cm: Any, label_names: Sequence[str] | None = None) -> dict[str, float]:
    """Flat dict of floats for logging: accuracy, macro_{precision,recall,f1}, mcc, and
    precision/NAME, recall/NAME, f1/NAME per class (NAME: the label name or class index)."""
    cm = np.asarray(cm, np.float64)
    num_classes = cm.shape[0]
    names = [str(i) for i in range(num_classes)] if label_names is None else list(label_names)
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} label_names for a {num_classes}-class confusion matrix.")
    total = cm.sum()
    stats = per_class(cm)
    present = (stats["support"] > 0) | (cm.sum(axis=0) > 0)
    out = {"accuracy": float(np.trace(cm) / total) if total > 0 else 0.0}
    for key in ("precision", "recall", "f1"):
        out[f"macro_{key}"] = float(stats[key][present].mean()) if present.any() else 0.0
    out["mcc"] = matthews_corrcoef(cm)
    for key in ("precision", "recall", "f1"):
        out.update({f"{key}/{name}": float(v) for name, v in zip(names, stats[key], strict=True)})
    return out
