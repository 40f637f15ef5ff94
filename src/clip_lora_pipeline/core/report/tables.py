"""The comparison table across methods and datasets, and the per-class F1 table."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from clip_lora_pipeline.core.metrics import accuracy_interval


def top1_with_interval(row: Mapping[str, Any]) -> str:
    """``0.8123 (0.7957–0.8279)``: top-1 and its 95% interval; without one, top-1 alone."""
    low, high = row.get("top1_ci_low", math.nan), row.get("top1_ci_high", math.nan)
    if pd.isna(low) or pd.isna(high):
        return f"{row['top1']:.4f}"
    return f"{row['top1']:.4f} ({low:.4f}–{high:.4f})"


# column: (header, format string for its value, or a function of the whole row)
Format = str | Callable[[Mapping[str, Any]], str]
COMPARISON_COLUMNS: dict[str, tuple[str, Format]] = {
    "dataset": ("dataset", "{}"),
    "method": ("method", "{}"),
    "top1": ("top-1 (95% CI)", top1_with_interval),
    "n_test_images": ("test images", "{:,.0f}"),
    "mean_per_class_recall": ("mean per-class recall", "{:.4f}"),
    "macro_f1": ("macro-F1", "{:.4f}"),
    "trainable_parameters": ("trainable parameters", "{:,.0f}"),
    "shots": ("shots", "{:.0f}"),
    "training_seconds": ("training time (s)", "{:.1f}"),
    "peak_memory_mb": ("peak memory (MB)", "{:,.0f}"),
}


def _interval(metrics: Mapping[str, Any]) -> tuple[float, float]:
    """The stored interval, or (metrics written before it was stored) the same interval
    from top-1 and the test-set size: top-1 x n is the count of correct images."""
    if "top1_ci_low" in metrics and "top1_ci_high" in metrics:
        return metrics["top1_ci_low"], metrics["top1_ci_high"]
    n = int(metrics["n_images"])
    return accuracy_interval(round(metrics["top1"] * n), n)


def result_row(dataset: str, method: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """One comparison row from a method's metrics. Zero-shot trains nothing on no shots;
    values a method did not measure stay empty (NaN), never zero."""
    zero_shot = method.startswith("zero_shot")
    training = metrics.get("training_seconds", metrics.get("fit_seconds"))
    ci_low, ci_high = _interval(metrics)
    return {
        "dataset": dataset,
        "method": method,
        "top1": metrics["top1"],
        "top1_ci_low": ci_low,
        "top1_ci_high": ci_high,
        "top5": metrics.get("top5", math.nan),
        "mean_per_class_recall": metrics["mean_per_class_recall"],
        "macro_f1": metrics["macro_f1"],
        "trainable_parameters": 0 if zero_shot else metrics.get("trainable_parameters", math.nan),
        "shots": 0 if zero_shot else metrics.get("shots", math.nan),
        "training_seconds": 0.0 if zero_shot else (math.nan if training is None else training),
        "peak_memory_mb": metrics.get("peak_memory_mb", math.nan),
        "n_test_images": metrics["n_images"],
        "n_classes": metrics.get("n_classes", math.nan),
    }


def comparison_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    for column in ("trainable_parameters", "shots", "n_classes"):
        if column in table:
            table[column] = table[column].astype("Float64").round().astype("Int64")
    return table.reset_index(drop=True)


def _cell(row: Mapping[str, Any], column: str, fmt: Format, empty: str) -> str:
    if callable(fmt):
        return fmt(row)
    value = row[column]
    return empty if pd.isna(value) else fmt.format(value)


def formatted(table: pd.DataFrame, columns: Mapping[str, tuple[str, Format]] = COMPARISON_COLUMNS,
              empty: str = "—") -> pd.DataFrame:
    """The table as display strings under readable headers; missing values as ``empty``."""
    records = table.to_dict("records")
    return pd.DataFrame({
        header: [_cell(row, column, fmt, empty) for row in records]
        for column, (header, fmt) in columns.items()
    }, index=range(len(records)))


def to_markdown(table: pd.DataFrame, columns: Mapping[str, tuple[str, Format]] = COMPARISON_COLUMNS
                ) -> str:
    """A GitHub-style markdown table, text columns left-aligned, numbers right-aligned."""
    shown = formatted(table, columns)
    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in columns]
    lines = ["| " + " | ".join(shown.columns) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
              for row in shown.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def per_class_f1_table(per_class: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per class, one F1 column per method, plus the test support."""
    frames = iter(per_class.items())
    first_method, first = next(frames)
    table = first[["class_name", "support"]].copy()
    table[first_method] = first["f1"].to_numpy()
    for method, frame in frames:
        if list(frame["class_name"]) != list(table["class_name"]):
            raise ValueError(f"per-class table of {method} lists other classes than {first_method}.")
        table[method] = frame["f1"].to_numpy()
    return table
