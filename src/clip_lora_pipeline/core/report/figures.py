"""Matplotlib figures for the report. Built on ``matplotlib.figure.Figure`` (no pyplot
state), so they are safe to make in any thread and never open a window."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from clip_lora_pipeline.core.images import load_rgb

# Above this many classes, tick labels overlap: draw a bare heatmap and list the
# most-confused pairs in a table instead.
MAX_LABELLED_CLASSES = 40
CORRECT_COLOUR, WRONG_COLOUR = "#1a7f37", "#cf222e"


def confusion_matrix(predictions: pd.DataFrame, class_names: Sequence[str]) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class, in ``class_names`` order."""
    index = {name: i for i, name in enumerate(class_names)}
    unknown = set(predictions["true_class"]).union(predictions["predicted_class"]) - set(index)
    if unknown:
        raise ValueError(f"predictions name classes missing from the class list: {sorted(unknown)[:5]}")
    matrix = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    rows = predictions["true_class"].map(index).to_numpy()
    cols = predictions["predicted_class"].map(index).to_numpy()
    np.add.at(matrix, (rows, cols), 1)
    return matrix


def row_normalised(matrix: np.ndarray) -> np.ndarray:
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)


def most_confused_pairs(
    matrix: np.ndarray, class_names: Sequence[str], top: int = 15
) -> pd.DataFrame:
    """The largest off-diagonal cells: which true class is most often taken for which."""
    rates = row_normalised(matrix)
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    true_idx, pred_idx = np.nonzero(off)
    order = np.lexsort((-rates[true_idx, pred_idx], -off[true_idx, pred_idx]))[:top]
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


def accuracy_chart(comparison: pd.DataFrame) -> Figure:
    """Grouped bars: top-1 accuracy of every method, one group per dataset."""
    datasets = list(dict.fromkeys(comparison["dataset"]))
    methods = list(dict.fromkeys(comparison["method"]))
    width = 0.8 / max(len(methods), 1)
    fig = Figure(figsize=(max(8, 1.6 * len(datasets) * max(1, len(methods) / 3)), 4),
                 layout="constrained")
    ax = fig.add_subplot()
    colours = [f"C{i % 10}" for i in range(len(methods))]
    for m, (method, colour) in enumerate(zip(methods, colours)):
        rows = comparison[comparison["method"] == method].set_index("dataset")
        values = [rows["top1"].get(d, np.nan) for d in datasets]
        x = np.arange(len(datasets)) + (m - (len(methods) - 1) / 2) * width
        bars = ax.bar(x, values, width, label=method, color=colour)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("top-1 accuracy (test)")
    ax.set_title("Accuracy per method and dataset")
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


def prediction_grid_figure(
    samples: pd.DataFrame, image_root: str | Path, title: str, columns: int = 4
) -> Figure:
    """Thumbnails with true class, predicted class and confidence; errors in red."""
    rows = max(1, -(-len(samples) // columns))
    fig = Figure(figsize=(3 * columns, 3.3 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, (_, row) in zip(axes, samples.iterrows()):
        colour = CORRECT_COLOUR if row["correct"] else WRONG_COLOUR
        try:
            image = load_rgb(Path(image_root) / row["path"])
            image.thumbnail((256, 256))
            ax.imshow(image)
        except OSError as error:  # a file moved since the run: show why, keep the grid
            ax.text(0.5, 0.5, f"cannot open\n{Path(row['path']).name}\n{error}", ha="center",
                    va="center", fontsize=7, wrap=True, transform=ax.transAxes)
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(4)
        ax.set_title(f"true: {row['true_class']}\npred: {row['predicted_class']} "
                     f"({row['confidence']:.2f})", fontsize=8, color=colour)
    fig.legend(handles=[Patch(color=CORRECT_COLOUR, label="correct"),
                        Patch(color=WRONG_COLOUR, label="wrong")], loc="outside lower center",
               ncols=2, fontsize=8)
    fig.suptitle(title)
    return fig
