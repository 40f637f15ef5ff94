"""Reporting: per dataset and method, figures and tables; across them, the comparison
table and chart and one HTML report. Reads only finished results, so it re-renders
the report without recomputing anything."""

from __future__ import annotations

import warnings

from kedro.pipeline import Node, Pipeline

from clip_lora_pipeline.core.cells import Cell
from clip_lora_pipeline.fingerprints import READS_DATASET_FOLDER
from clip_lora_pipeline.pipelines import namespaces
from clip_lora_pipeline.pipelines.reporting.nodes import (
    comparison,
    confusion_report,
    dataset_results,
    dataset_section,
    per_class_f1,
    prediction_grid,
    record_run,
    report,
    training_curves,
)

_bound = namespaces.bound


def method_results(prompt_sets: list[str], feature_methods: list[str],
                   adaptation_methods: list[str]) -> dict[str, str]:
    """Method name in the reports -> prefix of its result datasets."""
    return {
        **{f"zero_shot_{s}": f"zero_shot_{s}" for s in prompt_sets},
        **{name: name for name in feature_methods},
        **{m: f"adapted_{m}" for m in adaptation_methods},
    }


def create_pipeline(dataset: str, prompt_sets: list[str], feature_methods: list[str],
                    adaptation_methods: list[str]) -> Pipeline:
    """One dataset's figures, tables and report section (names inside its namespace).
    ``feature_methods``: the methods on cached features (linear_probe, tip_adapter, ...)."""
    results = method_results(prompt_sets, feature_methods, adaptation_methods)
    methods = list(results)
    nodes = []
    section_inputs = {"per_class_f1": "report_per_class_f1"}
    for method, prefix in results.items():
        label = f"{dataset} / {method}"
        nodes += [
            Node(_bound(confusion_report, title=f"{label}: confusion matrix"),
                 [f"{prefix}_predictions", f"{prefix}_per_class"],
                 [f"report_confusion_{method}", f"report_most_confused_{method}"],
                 name=f"report_confusion_{method}", tags=["reporting"]),
            Node(_bound(prediction_grid, title=f"{label}: sample predictions"),
                 [f"{prefix}_predictions", "params:dataset"],
                 f"report_prediction_grid_{method}",
                 # its thumbnails are read from the dataset's folder by path
                 name=f"report_prediction_grid_{method}",
                 tags=["reporting", READS_DATASET_FOLDER]),
        ]
        section_inputs |= {f"confusion__{method}": f"report_confusion_{method}",
                           f"grid__{method}": f"report_prediction_grid_{method}",
                           f"most_confused__{method}": f"report_most_confused_{method}"}
        if method in adaptation_methods:
            nodes.append(Node(_bound(training_curves, title=f"{label}: training"),
                              f"{prefix}_history", f"report_training_curves_{method}",
                              name=f"report_training_curves_{method}", tags=["reporting"]))
            section_inputs[f"curves__{method}"] = f"report_training_curves_{method}"
    nodes += [
        Node(_bound(per_class_f1, methods=methods),
             {f"per_class__{m}": f"{p}_per_class" for m, p in results.items()},
             "report_per_class_f1", name="report_per_class_f1", tags=["reporting"]),
        Node(_bound(dataset_results, dataset_name=dataset, methods=methods),
             {f"metrics__{m}": f"{p}_metrics" for m, p in results.items()},
             "report_results", name="report_results", tags=["reporting"]),
        Node(_bound(dataset_section, dataset_name=dataset, methods=methods),
             section_inputs, "report_section", name="report_section", tags=["reporting"]),
    ]
    return Pipeline(nodes)


def for_cell(name: str, cell: Cell, prompt_sets: list[str], feature_methods: list[str],
             adaptation_methods: list[str]) -> Pipeline:
    return namespaces.for_cell_report(
        create_pipeline(name, prompt_sets, feature_methods, adaptation_methods), name, cell)


def create_summary_pipeline(prompt_sets: dict[str, list[str]], cell: Cell, methods: list[str]
                            ) -> Pipeline:
    """Across datasets (``prompt_sets``: each dataset's), for one cell: the comparison
    table, its chart, the record of how the run was made, and the HTML report.
    ``methods``: every method in the report."""
    with warnings.catch_warnings():
        # These nodes read every dataset's namespaced outputs by design; Kedro warns
        # about any dotted name outside its own namespace.
        warnings.filterwarnings("ignore", message="One or more dataset names contain '.'")
        return _summary_pipeline(prompt_sets, cell, methods)


def _record_inputs(datasets: list[str]) -> dict[str, str]:
    inputs = {key: f"params:{key}" for key in (
        "model", "prompt_sets", "feature_methods", "adaptation_methods", "split")}
    for d in datasets:
        inputs |= {f"config__{d}": f"params:dataset_configs.{d}",
                   f"rejected__{d}": f"{d}.rejected_images",
                   **{f"{part}__{d}": f"{d}.{part}" for part in ("test", "train", "val")}}
    return inputs


def _summary_pipeline(prompt_sets: dict[str, list[str]], cell: Cell, methods: list[str]
                      ) -> Pipeline:
    """In the namespace ``<cell>``: it reads the report sections ``<cell>.<d>.*``, and the
    splits that made the cell (``<d>.test``, ``<d>.<cell>.train``, ...). Its outputs are
    named by the datasets they cover (``<cell>.report__<d1>+<d2>``)."""
    datasets = list(prompt_sets)
    record = _record_inputs(datasets)
    out = {name: f"{name}__{namespaces.covered(datasets)}" for name in (
        "comparison_table", "comparison_table_markdown", "accuracy_chart", "run_record",
        "report")}
    nodes = Pipeline([
        Node(comparison, [f"{d}.report_results" for d in datasets],
             [out["comparison_table"], out["comparison_table_markdown"], out["accuracy_chart"]],
             name="comparison", tags=["reporting"]),
        Node(_bound(record_run, methods=methods, datasets=prompt_sets, shots=cell.shots,
                    few_shot_seed=cell.seed),
             record, out["run_record"], name="record_run", tags=["reporting"]),
        Node(_bound(report, datasets=datasets),
             {"comparison_table": out["comparison_table"], "accuracy_chart": out["accuracy_chart"],
              "record": out["run_record"],
              **{f"section__{d}": f"{d}.report_section" for d in datasets}},
             out["report"], name="report", tags=["reporting"]),
    ])
    splits = {f"{d}.{part}": (f"{d}.{cell.name}.{part}" if part in ("train", "val")
                              else f"{d}.{part}")
              for d in datasets for part in ("rejected_images", "test", "train", "val")}
    return Pipeline(nodes, namespace=cell.name, inputs=splits,
                    parameters={v for v in record.values() if v.startswith("params:")}
                    | {"params:model"})
