"""Thin wrappers over ``core.report``: figures and tables per dataset and method, the
comparison across methods and datasets, and the HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

import clip_lora_pipeline
from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.model_id import ModelSpec, model_slug
from clip_lora_pipeline.core.prompts import templates_for
from clip_lora_pipeline.core.report import figures, html, run_record, samples, tables

# The code that ran: the project's folder when installed from a checkout.
PROJECT_DIR = Path(clip_lora_pipeline.__file__).resolve().parents[2]


def confusion_report(
    predictions: pd.DataFrame, per_class: pd.DataFrame, title: str
) -> tuple[Figure, pd.DataFrame]:
    """Row-normalised confusion matrix figure and the most-confused class pairs."""
    classes = per_class["class_name"].tolist()
    matrix = figures.confusion_matrix(predictions, classes)
    return figures.confusion_figure(matrix, classes, title), figures.most_confused_pairs(
        matrix, classes)


def prediction_grid(predictions: pd.DataFrame, dataset: dict[str, Any], title: str) -> str:
    """A fixed sample of test images as captioned JPEG thumbnails; errors in red."""
    chosen = figures.sample_predictions(predictions)
    return samples.prediction_grid_html(chosen, storage.data_path(dataset["root"]), title)


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
            prediction_grid=artifacts[f"grid__{m}"],
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


def _training_seed(entry: dict[str, Any] | None, few_shot_seed: int) -> int:
    """An entry's own seed, or the few-shot seed when it sets none (or null)."""
    seed = (entry or {}).get("seed")
    return few_shot_seed if seed is None else seed


def record_run(
    model: dict[str, Any], prompt_sets: dict[str, Any], feature_methods: dict[str, Any],
    adaptation_methods: dict[str, Any],
    split: dict[str, Any], methods: list[str], datasets: dict[str, list[str]],
    shots: int | None, few_shot_seed: int, **inputs: Any,
) -> dict[str, Any]:
    """How the run was made: settings, templates, split sizes, seeds, code and machine.
    ``datasets``: each dataset's prompt sets. ``inputs`` holds per dataset ``config__<d>``
    and the tables ``rejected__<d>``, ``train__<d>``, ``val__<d>``, ``test__<d>``."""
    sources = {d: inputs[f"config__{d}"].get("source") for d in datasets}
    templates = {name: {d: templates_for(spec, sources[d]) for d, used in datasets.items()
                        if name in used}
                 for name, spec in prompt_sets.items()}
    settings = {**{f"zero_shot_{name}": {"prompt_set": spec} for name, spec in prompt_sets.items()},
                **(feature_methods or {}), **adaptation_methods}
    seeds = {"few_shot_seed": few_shot_seed, "split.seed": split.get("seed"),
             **{f"{m} training seed": _training_seed(adaptation_methods[m], few_shot_seed)
                for m in methods if m in adaptation_methods}}
    splits = {d: run_record.split_counts(
        rejected=inputs[f"rejected__{d}"],
        **{s: inputs[f"{s}__{d}"] for s in ("train", "val", "test")}) for d in datasets}
    return run_record.run_record(
        run_record.environment_record(PROJECT_DIR), model=model_slug(ModelSpec.from_params(model)),
        shots=shots, seeds=seeds, methods={m: settings.get(m) for m in methods},
        prompt_templates=templates, splits=splits)


def report(
    comparison_table: pd.DataFrame, accuracy_chart: bytes, record: dict[str, Any],
    datasets: list[str], **sections: str,
) -> str:
    """The self-contained HTML report (``section__<dataset>`` fragments)."""
    run_info = {"model": record["model"], "shots": record["shots"],
                "few-shot seed": record["seeds"]["few_shot_seed"]}
    return html.report_html(comparison_table, accuracy_chart,
                            {d: sections[f"section__{d}"] for d in datasets}, run_info,
                            run_record=record)
