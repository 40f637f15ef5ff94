"""Classification metrics and the per-class and per-image tables every method reports."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def ranked_classes(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class indices per row from most to least likely (ties: lower label first), and
    the rows' softmax probabilities."""
    return np.argsort(-logits, axis=1, kind="stable"), softmax(logits.astype(np.float64))


def evaluate(
    logits: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    keys: Sequence[str],
) -> tuple[dict[str, float], pd.DataFrame, pd.DataFrame]:
    """Metrics, a per-class table and a predictions table from (rows, classes) logits.

    Metrics: top-1, top-5 (with at least 5 classes), mean per-class recall, macro-F1.
    """
    n_classes = len(class_names)
    if logits.shape != (len(labels), n_classes):
        raise ValueError(f"logits have shape {logits.shape}, expected ({len(labels)}, {n_classes}).")
    labels = np.asarray(labels)
    ranked, probs = ranked_classes(logits)
    predicted = ranked[:, 0]
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=np.arange(n_classes), zero_division=0
    )
    present = support > 0
    metrics = {
        "n_images": int(len(labels)),
        "n_classes": int(n_classes),
        "top1": float((predicted == labels).mean()),
        "mean_per_class_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
    }
    if n_classes >= 5:
        metrics["top5"] = float((ranked[:, :5] == labels[:, None]).any(axis=1).mean())
    per_class = pd.DataFrame({
        "class_name": list(class_names),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support.astype(np.int64),
    })
    names = np.asarray(class_names, dtype=object)
    k = min(5, n_classes)
    predictions = pd.DataFrame({
        "path": list(keys),
        "true_class": names[labels],
        "predicted_class": names[predicted],
        "confidence": probs[np.arange(len(labels)), predicted],
        "correct": predicted == labels,
        "top5_classes": [list(names[row[:k]]) for row in ranked],
        "top5_probs": [list(probs[i, row[:k]]) for i, row in enumerate(ranked)],
    })
    return metrics, per_class, predictions
