"""Thin wrappers over ``core.report``: figures and tables per dataset and method, the
comparison across methods and datasets, and the HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from clip_lora_pipeline.core.model_id import ModelSpec, model_slug
from clip_lora_pipeline.core.report import figures, html, tables


def confusion_report(
    predictions: pd.DataFrame, per_class: pd.DataFrame, title: str
) -> tuple[Figure, pd.DataFrame]:
    """Row-normalised confusion matrix figure and the most-confused class pairs."""
    classes = per_class["class_name"].tolist()
    matrix = figures.confusion_matrix(predictions, classes)
    return figures.confusion_figure(matrix, classes, title), figures.most_confused_pairs(
        matrix, classes)


def prediction_grid(predictions: pd.DataFrame, dataset: dict[str, Any], title: str) -> Figure:
    """A fixed sample of test images with their predictions; errors in red."""
    samples = figures.sample_predictions(predictions)
    return figures.prediction_grid_figure(samples, Path(dataset["root"]), title)


def training_curves(history: pd.DataFrame, title: str) -> Figure:
    return figures.training_curves_figure(history, title)


def per_class_f1(methods: list[str], **per_class: pd.DataFrame) -> pd.DataFrame:
    """Per-class F1 of every method side by side (``per_class__<method>`` tables)."""
    return tables.per_class_f1_table({m: per_class[f"per_class__{m}"] for m in methods})


def dataset_results(dataset_name: str, methods: list[str], **metrics: dict[str, Any]
                    ) -> pd.DataFrame:
    """One comparison row per method for this dataset (``metrics__<method>`` dicts)."""
    return pd.DataFrame([tables.result_row(dataset_name, m, metrics[f"metrics__{m}"])
                         for m in methods])


def dataset_section(
    per_class_f1: pd.DataFrame, dataset_name: str, methods: list[str], **artifacts: Any
) -> str:
    """This dataset's part of the HTML report. ``artifacts`` holds per method the PNGs
    ``confusion__<m>``, ``grid__<m>`` and (trained methods) ``curves__<m>``, and the
    table ``most_confused__<m>``."""
    sections = [
        html.MethodSection(
            method=m,
            confusion_png=artifacts[f"confusion__{m}"],
            prediction_grid_png=artifacts[f"grid__{m}"],
            most_confused=artifacts[f"most_confused__{m}"],
            training_curves_png=artifacts.get(f"curves__{m}"),
        )
        for m in methods
    ]
    return html.dataset_section_html(html.DatasetSection(dataset_name, per_class_f1, sections))


def comparison(*dataset_results: pd.DataFrame) -> tuple[pd.DataFrame, str, Figure]:
    """The comparison across datasets and methods: table, markdown and bar chart."""
    table = tables.comparison_table(
        [row for frame in dataset_results for row in frame.to_dict("records")])
    return table, tables.to_markdown(table), figures.accuracy_chart(table)


def report(
    comparison_table: pd.DataFrame, accuracy_chart: bytes, model: dict[str, Any],
    shots: int | None, few_shot_seed: int | None, datasets: list[str], **sections: str,
) -> str:
    """The self-contained HTML report (``section__<dataset>`` fragments)."""
    run_info = {"model": model_slug(ModelSpec.from_params(model)), "shots": shots,
                "few-shot seed": few_shot_seed}
    return html.report_html(comparison_table, accuracy_chart,
                            {d: sections[f"section__{d}"] for d in datasets}, run_info)
