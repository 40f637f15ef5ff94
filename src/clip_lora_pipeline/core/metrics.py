"""Classification metrics and the per-class and per-image tables every method reports."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.special import softmax
from scipy.stats import norm
from sklearn.metrics import precision_recall_fscore_support


def ranked_classes(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class indices per row from most to least likely (ties: lower label first), and
    the rows' softmax probabilities in float64."""
    ranked = np.argsort(-logits, axis=1, kind="stable")
    return ranked, softmax(logits.astype(np.float64), axis=1)


def accuracy_interval(correct: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for an accuracy of ``correct`` out of ``n`` test images.

    Wilson rather than the normal approximation p ± z·sqrt(p(1-p)/n): that one collapses
    to zero width at 0% or 100% and spills outside [0, 1] near them, which is where
    few-class or easy test sets put strong methods; Wilson keeps close to the nominal
    coverage there and needs no special cases (Newcombe 1998). (nan, nan) without images.
    """
    if not 0 <= correct <= n:
        raise ValueError(f"correct must lie in 0..n, got {correct} of {n}.")
    if n == 0:
        return math.nan, math.nan
    z = float(norm.ppf(0.5 + level / 2))
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # Rounding can put a bound a hair outside [0, 1] at p = 0 or 1.
    return max(0.0, centre - half), min(1.0, centre + half)


def evaluate(
    logits: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    keys: Sequence[str],
) -> tuple[dict[str, float], pd.DataFrame, pd.DataFrame]:
    """Metrics, a per-class table and a predictions table from (rows, classes) logits.

    Metrics: top-1 with its 95% Wilson interval, top-5 (with at least 5 classes), mean
    per-class recall, macro-F1.
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
    n_correct = int((predicted == labels).sum())
    ci_low, ci_high = accuracy_interval(n_correct, len(labels))
    metrics = {
        "n_images": int(len(labels)),
        "n_classes": int(n_classes),
        "top1": float((predicted == labels).mean()),
        "top1_ci_low": ci_low,
        "top1_ci_high": ci_high,
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
