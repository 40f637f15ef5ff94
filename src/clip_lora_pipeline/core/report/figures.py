"""Matplotlib figures for the report. Built on ``matplotlib.figure.Figure`` (no pyplot
state), so they are safe to make in any thread and never open a window."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

# Above this many classes, tick labels overlap: draw a bare heatmap and list the
# most-confused pairs in a table instead.
MAX_LABELLED_CLASSES = 40
CORRECT_COLOUR, WRONG_COLOUR = "#1a7f37", "#cf222e"


def confusion_matrix(predictions: pd.DataFrame, class_names: Sequence[str]) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class, in ``class_names`` order."""
    labels = list(class_names)
    unknown = set(predictions["true_class"]).union(predictions["predicted_class"]) - set(labels)
    if unknown:
        raise ValueError(f"predictions name classes missing from the class list: {sorted(unknown)[:5]}")
    if predictions.empty:  # sklearn refuses empty input
        return np.zeros((len(labels), len(labels)), dtype=np.int64)
    return sklearn_confusion_matrix(
        predictions["true_class"].to_numpy(dtype=object),
        predictions["predicted_class"].to_numpy(dtype=object),
        labels=labels,
    ).astype(np.int64, copy=False)


def row_normalised(matrix: np.ndarray) -> np.ndarray:
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)


def most_confused_pairs(
    matrix: np.ndarray, class_names: Sequence[str], top: int = 15
) -> pd.DataFrame:
    """The largest off-diagonal cells: which true class is most often taken for which.

    Ranked by the share of the true class's test images (ties: by count), not by raw
    count: with unequal class sizes, counts favour big classes, while the share says
    how badly a class is served."""
    rates = row_normalised(matrix)
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    true_idx, pred_idx = np.nonzero(off)
    # lexsort's last key is the primary one
    order = np.lexsort((-off[true_idx, pred_idx], -rates[true_idx, pred_idx]))[:top]
    names = np.asarray(class_names, dtype=object)
    return pd.DataFrame({
        "true_class": names[true_idx[order]],
        "predicted_class": names[pred_idx[order]],
        "count": off[true_idx[order], pred_idx[order]].astype(np.int64),
        "fraction_of_true_class": rates[true_idx[order], pred_idx[order]],
    })


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """Row-normalised confusion matrix; class names on the axes up to 40 classes."""
    n = len(class_names)
    labelled = n <= MAX_LABELLED_CLASSES
    side = min(max(4.5, 0.28 * n + 2.5), 14) if labelled else 8
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(row_normalised(matrix), cmap="Blues", vmin=0, vmax=1,
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if labelled:
        ax.set_xticks(range(n), list(class_names), rotation=90, fontsize=8)
        ax.set_yticks(range(n), list(class_names), fontsize=8)
        if n <= 15:
            rates = row_normalised(matrix)
            for i, j in zip(*np.nonzero(matrix)):
                ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def _interval_errors(rows: pd.DataFrame, datasets: list[str]) -> np.ndarray | None:
    """(2, datasets) distances from top-1 down to and up to its 95% bounds, or None for
    tables written before the bounds were stored."""
    if not {"top1_ci_low", "top1_ci_high"} <= set(rows.columns):
        return None
    top1 = np.array([rows["top1"].get(d, np.nan) for d in datasets], dtype=float)
    low = np.array([rows["top1_ci_low"].get(d, np.nan) for d in datasets], dtype=float)
    high = np.array([rows["top1_ci_high"].get(d, np.nan) for d in datasets], dtype=float)
    return np.vstack([top1 - low, high - top1])


def _chance_lines(ax, comparison: pd.DataFrame, datasets: list[str]) -> None:
    """A dashed line at 1 / classes across each dataset's group of bars: how far above
    guessing a method is, which differs per dataset (10 classes vs 102)."""
    if "n_classes" not in comparison:
        return
    classes = comparison.groupby("dataset", sort=False)["n_classes"].max()
    label = "chance (1 / classes)"
    for i, dataset in enumerate(datasets):
        n = classes.get(dataset)
        if n is None or pd.isna(n) or n <= 0:
            continue
        ax.plot([i - 0.45, i + 0.45], [1 / n, 1 / n], color="0.3", linestyle="--",
                linewidth=1.2, label=label, zorder=3)
        label = "_nolegend_"  # one legend entry for all groups


def accuracy_chart(comparison: pd.DataFrame) -> Figure:
    """Grouped bars: top-1 accuracy of every method with its 95% interval, one group per
    dataset, and each dataset's chance level."""
    datasets = list(dict.fromkeys(comparison["dataset"]))
    methods = list(dict.fromkeys(comparison["method"]))
    width = 0.8 / max(len(methods), 1)
    fig = Figure(figsize=(max(8, 1.6 * len(datasets) * max(1, len(methods) / 3)), 4.2),
                 layout="constrained")
    ax = fig.add_subplot()
    for m, method in enumerate(methods):
        rows = comparison[comparison["method"] == method].set_index("dataset")
        values = [rows["top1"].get(d, np.nan) for d in datasets]
        x = np.arange(len(datasets)) + (m - (len(methods) - 1) / 2) * width
        bars = ax.bar(x, values, width, label=method, color=f"C{m % 10}",
                      yerr=_interval_errors(rows, datasets),
                      error_kw={"ecolor": "0.15", "elinewidth": 1, "capsize": 2})
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    _chance_lines(ax, comparison, datasets)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("top-1 accuracy (test)")
    ax.set_title("Accuracy per method and dataset (error bars: 95% Wilson interval)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def training_curves_figure(history: pd.DataFrame, title: str) -> Figure:
    """Loss and accuracies per step; validation points where it was evaluated."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(history["step"], history["loss"], color="C0", linewidth=1)
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("training loss")
    loss_ax.set_title("Loss")
    acc_ax.plot(history["step"], history["train_accuracy"], color="C1", linewidth=1,
                alpha=0.8, label="train (batch)")
    val = history.dropna(subset=["val_accuracy"])
    acc_ax.plot(val["step"], val["val_accuracy"], color="C2", marker="o", markersize=4,
                label="validation")
    acc_ax.set_ylim(-0.02, 1.02)
    acc_ax.set_xlabel("step")
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_title("Accuracy")
    acc_ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def sample_predictions(predictions: pd.DataFrame, n: int = 16, seed: int = 0) -> pd.DataFrame:
    """A fixed sample to show: up to half errors (they teach the most), the rest correct."""
    errors = predictions[~predictions["correct"]]
    correct = predictions[predictions["correct"]]
    n_correct = min(len(correct), n - min(len(errors), n // 2))
    n_errors = min(len(errors), n - n_correct)  # fewer correct ones: show more errors
    chosen = pd.concat([errors.sample(n_errors, random_state=seed),
                        correct.sample(n_correct, random_state=seed)])
    return chosen.sort_values("path", kind="stable")
