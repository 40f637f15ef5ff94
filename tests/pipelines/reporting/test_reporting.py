"""Reporting nodes and the pipeline, on results with known numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from matplotlib.figure import Figure

from clip_lora_pipeline.core.cells import Cell
from clip_lora_pipeline.core.metrics import evaluate
from clip_lora_pipeline.datasets import (
    FigureDataset,
    JSONDataset,
    ParquetDataset,
    TextDataset,
)
from clip_lora_pipeline.pipelines.reporting import nodes
from clip_lora_pipeline.pipelines.reporting.pipeline import (
    create_summary_pipeline,
    for_cell,
    method_results,
)
from tests.conftest import write_image

CLASSES = ["ant", "bee", "cow", "dog", "elk"]
MODEL = {"name": "clip-lora-tiny", "pretrained": None, "checkpoint": None}
CELL = Cell(shots=4, seed=1)
C = f"pets.{CELL.name}"  # the cell's namespace
R = f"{CELL.name}.pets"  # the cell's report on the dataset


def _results(accuracy: float, seed: int, n: int = 20):
    """Metrics, per-class table and predictions with about ``accuracy`` correct."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    logits = rng.normal(size=(n, len(CLASSES)))
    right = rng.random(n) < accuracy
    logits[right, labels[right]] += 10
    return evaluate(logits, labels, CLASSES, [f"img/{i:03d}.png" for i in range(n)])


def _history(steps: int = 10) -> pd.DataFrame:
    return pd.DataFrame({"step": np.arange(1, steps + 1), "loss": np.linspace(2, 0.5, steps),
                         "train_accuracy": np.linspace(0.2, 0.9, steps), "lr": 1e-3,
                         "val_accuracy": [0.5 if s % 5 == 0 else np.nan
                                          for s in range(1, steps + 1)]})


def test_confusion_report_node_returns_figure_and_pairs():
    _, per_class, predictions = _results(0.5, seed=0)
    figure, pairs = nodes.confusion_report(predictions, per_class, title="t")
    assert isinstance(figure, Figure)
    wrong = predictions[~predictions["correct"]]
    assert pairs["count"].sum() == len(wrong) or len(pairs) == 15


def test_dataset_results_keep_method_order_and_values():
    metrics = {f"metrics__{m}": _results(a, seed=i)[0]
               for i, (m, a) in enumerate([("zero_shot_simple", 0.3), ("lora", 0.9)])}
    metrics["metrics__lora"] |= {"shots": 4, "trainable_parameters": 100,
                                 "training_seconds": 2.0, "peak_memory_mb": 50.0}
    rows = nodes.dataset_results("pets", ["zero_shot_simple", "lora"], **metrics)
    assert rows["method"].tolist() == ["zero_shot_simple", "lora"]
    assert rows["top1"].tolist() == [metrics["metrics__zero_shot_simple"]["top1"],
                                     metrics["metrics__lora"]["top1"]]
    assert rows["shots"].tolist() == [0, 4]


def test_comparison_node_stacks_datasets():
    a = pd.DataFrame([nodes.tables.result_row("a", "lora", _results(0.9, 1)[0])])
    b = pd.DataFrame([nodes.tables.result_row("b", "lora", _results(0.4, 2)[0])])
    table, markdown, chart = nodes.comparison(a, b)
    assert table["dataset"].tolist() == ["a", "b"]
    assert markdown.count("| lora |") == 2 and isinstance(chart, Figure)
    # each dataset's chance level (5 classes) as a dashed line on the chart
    chance = [line for line in chart.axes[0].lines if line.get_linestyle() == "--"]
    assert [line.get_ydata()[0] for line in chance] == pytest.approx([0.2, 0.2])


def _manifest(n: int) -> pd.DataFrame:
    return pd.DataFrame({"path": [f"img/{i:03d}.png" for i in range(n)],
                         "label": np.arange(n) % len(CLASSES)})


def _catalog(tmp_path, methods: dict[str, str]) -> DataCatalog:
    catalog = DataCatalog()
    root = tmp_path / "images"
    for i in range(20):
        write_image(root / f"img/{i:03d}.png", seed=i)
    for k, (method, prefix) in enumerate(methods.items()):
        metrics, per_class, predictions = _results(0.2 + 0.3 * k, seed=k)
        # zero-shot results are made once per dataset, the others per few-shot cell
        where = "pets" if method.startswith("zero_shot") else C
        if method == "lora":
            metrics |= {"shots": 4, "trainable_parameters": 1000, "training_seconds": 3.0,
                        "peak_memory_mb": 512.0}
            catalog[f"{where}.{prefix}_history"] = MemoryDataset(_history())
        catalog[f"{where}.{prefix}_metrics"] = MemoryDataset(metrics)
        catalog[f"{where}.{prefix}_per_class"] = MemoryDataset(per_class)
        catalog[f"{where}.{prefix}_predictions"] = MemoryDataset(predictions)
    params = {"dataset_configs.pets": {"root": str(root), "source": "oxford_pets"},
              "model": MODEL, "prompt_sets": {"simple": "simple"},
              "feature_methods": {"linear_probe": {"method": "linear_probe", "c_steps": 5}},
              "adaptation_methods": {"lora": {"method": "lora", "lora": {"r": 2}}},
              "split": {"seed": 0}}
    for key, value in params.items():
        catalog[f"params:{key}"] = MemoryDataset(value)
    catalog["pets.rejected_images"] = MemoryDataset(pd.DataFrame({"path": ["bad.png"]}))
    catalog["pets.test"] = MemoryDataset(_manifest(20))
    catalog[f"{C}.train"] = MemoryDataset(_manifest(20))
    catalog[f"{C}.val"] = MemoryDataset(_manifest(10))
    return catalog


@pytest.mark.parametrize("kind", ["confusion", "prediction_grid", "training_curves"])
def test_pipeline_declares_figures_per_method(kind):
    pipeline = for_cell("pets", CELL, ["simple"], ["linear_probe"], ["lora"])
    outputs = {o for o in pipeline.all_outputs() if f".report_{kind}_" in o}
    expected = ["lora"] if kind == "training_curves" else ["zero_shot_simple", "linear_probe",
                                                           "lora"]
    assert outputs == {f"{R}.report_{kind}_{m}" for m in expected}
    # zero-shot results are read under the dataset's names: made once for every cell
    assert "pets.zero_shot_simple_predictions" in pipeline.inputs()


def test_pipeline_renders_the_report_from_results(tmp_path):
    methods = method_results(["simple"], ["linear_probe"], ["lora"])
    catalog = _catalog(tmp_path, methods)
    pipeline = (for_cell("pets", CELL, ["simple"], ["linear_probe"], ["lora"])
                + create_summary_pipeline({"pets": ["simple"]}, CELL, list(methods)))
    out = tmp_path / "out"
    for name in pipeline.all_outputs():
        if "report_confusion_" in name or "curves" in name or name.endswith("accuracy_chart__pets"):
            catalog[name] = FigureDataset(filepath=str(out / f"{name}.png"))
    # what the test reads afterwards must outlive the run (memory datasets are released)
    catalog[f"{CELL.name}.comparison_table__pets"] = ParquetDataset(
        filepath=str(tmp_path / "comparison.parquet"))
    catalog[f"{R}.report_per_class_f1"] = ParquetDataset(filepath=str(tmp_path / "f1.parquet"))
    catalog[f"{CELL.name}.run_record__pets"] = JSONDataset(filepath=str(tmp_path / "record.json"))
    catalog[f"{CELL.name}.report__pets"] = TextDataset(filepath=str(tmp_path / "report.html"))
    SequentialRunner().run(pipeline, catalog)

    comparison = catalog.load(f"{CELL.name}.comparison_table__pets")
    assert comparison["method"].tolist() == ["zero_shot_simple", "linear_probe", "lora"]
    metrics = [catalog.load(f"{'pets' if m.startswith('zero') else C}.{p}_metrics")
               for m, p in methods.items()]
    assert comparison["top1"].tolist() == [m["top1"] for m in metrics]
    assert comparison["top1_ci_low"].tolist() == [m["top1_ci_low"] for m in metrics]
    assert (comparison["top1_ci_low"] < comparison["top1"]).all()
    assert comparison["n_classes"].tolist() == [5, 5, 5]
    assert comparison.loc[2, "peak_memory_mb"] == 512.0
    f1 = catalog.load(f"{R}.report_per_class_f1")
    assert f1.columns.tolist() == ["class_name", "support", *methods]

    record = catalog.load(f"{CELL.name}.run_record__pets")
    assert record["splits"]["pets"] == {"train": 20, "val": 10, "test": 20, "classes": 5,
                                        "rejected": 1}
    assert record["seeds"] == {"few_shot_seed": 1, "split.seed": 0, "lora training seed": 1}
    assert record["prompt_templates"]["simple"]["pets"] == ["a photo of a {}."]
    assert record["methods"]["lora"] == {"method": "lora", "lora": {"r": 2}}
    assert len(record["environment"]["git"]["commit"]) in (40, len("unknown"))
    page = catalog.load(f"{CELL.name}.report__pets")  # named by the datasets it covers
    # chart + confusion x 3 methods + lora's curves; the samples are JPEG thumbnails
    assert page.count("data:image/png;base64,") == 1 + 3 + 1
    assert page.count("data:image/jpeg;base64,") == 3 * 16
    assert '<table id="comparison"' in page and 'id="dataset-pets"' in page
    assert 'id="run-record"' in page and "split.seed" in page
    low, high = comparison.loc[0, ["top1_ci_low", "top1_ci_high"]]
    assert f"({low:.4f}–{high:.4f})" in page
    assert len(list(out.glob("*.png"))) == 1 + 3 + 1


def test_the_summary_is_named_by_the_datasets_it_covers():
    one = create_summary_pipeline({"pets": ["simple"]}, CELL, ["lora"])
    two = create_summary_pipeline({"pets": ["simple"], "cars": ["simple"]}, CELL, ["lora"])
    assert f"{CELL.name}.report__pets" in one.all_outputs()
    assert f"{CELL.name}.report__pets+cars" in two.all_outputs()
    many = create_summary_pipeline({f"dataset_{i}": ["simple"] for i in range(20)}, CELL,
                                   ["lora"])
    (report,) = [o for o in many.all_outputs() if ".report__" in o]
    assert report.startswith(f"{CELL.name}.report__20_datasets_") and len(report) < 60
