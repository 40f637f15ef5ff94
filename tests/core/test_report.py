"""Report figures, tables and HTML from hand-made predictions with known answers."""

from __future__ import annotations

import base64
import math

import numpy as np
import pandas as pd
import pytest

from clip_lora_pipeline.core.metrics import evaluate
from clip_lora_pipeline.core.report import figures, html, tables
from tests.conftest import write_image

CLASSES = ["cat", "dog", "fox"]


def _predictions(pairs: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame({
        "path": [f"{i:02d}.png" for i in range(len(pairs))],
        "true_class": [t for t, _ in pairs], "predicted_class": [p for _, p in pairs],
        "confidence": 0.5, "correct": [t == p for t, p in pairs],
    })


def test_confusion_matrix_counts_and_row_normalises():
    predictions = _predictions([("cat", "cat"), ("cat", "dog"), ("cat", "dog"), ("dog", "dog"),
                                ("fox", "cat")])
    matrix = figures.confusion_matrix(predictions, CLASSES)
    assert matrix.tolist() == [[1, 2, 0], [0, 1, 0], [1, 0, 0]]
    rates = figures.row_normalised(matrix)
    np.testing.assert_allclose(rates.sum(axis=1), [1, 1, 1])
    assert rates[0, 1] == pytest.approx(2 / 3)


def test_confusion_matrix_refuses_unknown_classes():
    with pytest.raises(ValueError, match="wolf"):
        figures.confusion_matrix(_predictions([("cat", "wolf")]), CLASSES)


def test_most_confused_pairs_rank_off_diagonal_cells():
    matrix = np.array([[5, 3, 1], [0, 9, 0], [2, 0, 1]])
    pairs = figures.most_confused_pairs(matrix, CLASSES)
    assert list(zip(pairs["true_class"], pairs["predicted_class"], pairs["count"])) == [
        ("cat", "dog", 3), ("fox", "cat", 2), ("cat", "fox", 1)]
    assert pairs["fraction_of_true_class"].iloc[1] == pytest.approx(2 / 3)


def test_confusion_figure_labels_axes_up_to_40_classes_only():
    few = [f"class {i}" for i in range(12)]
    fig = figures.confusion_figure(np.eye(12, dtype=int), few, "few")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == few
    many = [f"class {i}" for i in range(60)]
    fig = figures.confusion_figure(np.eye(60, dtype=int), many, "many")
    assert fig.axes[0].get_xticklabels() == []


def test_sample_predictions_show_errors_but_not_only_errors():
    pairs = [("cat", "dog")] * 20 + [("dog", "dog")] * 20
    sample = figures.sample_predictions(_predictions(pairs), n=16)
    assert len(sample) == 16 and (~sample["correct"]).sum() == 8
    assert sample["path"].is_unique


def test_prediction_grid_marks_errors_and_survives_a_missing_image(tmp_path):
    write_image(tmp_path / "00.png")
    predictions = _predictions([("cat", "cat"), ("dog", "fox")])  # 01.png does not exist
    fig = figures.prediction_grid_figure(predictions, tmp_path, "grid", columns=2)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().splitlines()[1] for ax in titled] == ["pred: cat (0.50)",
                                                                 "pred: fox (0.50)"]
    assert [ax.title.get_color() for ax in titled] == [figures.CORRECT_COLOUR,
                                                       figures.WRONG_COLOUR]
    assert "cannot open" in titled[1].texts[0].get_text()


def test_training_curves_plot_loss_and_validation_points():
    history = pd.DataFrame({"step": [1, 2, 3, 4], "loss": [2.0, 1.5, 1.0, 0.8],
                            "train_accuracy": [0.1, 0.3, 0.5, 0.6],
                            "val_accuracy": [math.nan, 0.4, math.nan, 0.7]})
    fig = figures.training_curves_figure(history, "curves")
    loss_ax, acc_ax = fig.axes
    assert loss_ax.lines[0].get_ydata().tolist() == [2.0, 1.5, 1.0, 0.8]
    assert acc_ax.lines[1].get_xdata().tolist() == [2, 4]


def _metrics(top1: float, **extra) -> dict:
    return {"top1": top1, "mean_per_class_recall": top1, "macro_f1": top1, "n_images": 10,
            **extra}


def test_comparison_rows_distinguish_zero_from_not_measured():
    rows = [
        tables.result_row("pets", "zero_shot_simple", _metrics(0.5)),
        tables.result_row("pets", "linear_probe", _metrics(0.7, shots=4, fit_seconds=1.5,
                                                            trainable_parameters=2050)),
        tables.result_row("pets", "lora", _metrics(0.8, shots=4, training_seconds=30.0,
                                                   trainable_parameters=184320,
                                                   peak_memory_mb=900.0)),
    ]
    table = tables.comparison_table(rows)
    assert table["trainable_parameters"].tolist() == [0, 2050, 184320]
    assert table["training_seconds"].tolist() == [0.0, 1.5, 30.0]
    assert math.isnan(table["peak_memory_mb"].iloc[1])
    markdown = tables.to_markdown(table).splitlines()
    assert markdown[0].startswith("| dataset | method | top-1 |")
    assert markdown[1].startswith("|---|---|---:|")
    assert markdown[3] == ("| pets | linear_probe | 0.7000 | 0.7000 | 0.7000 | 2,050 | 4 | "
                           "1.5 | — |")


def test_per_class_f1_table_refuses_mismatched_classes():
    first = pd.DataFrame({"class_name": CLASSES, "f1": [1.0, 0.5, 0.0], "support": [2, 2, 2]})
    other = first.assign(f1=[0.2, 0.2, 0.2])
    table = tables.per_class_f1_table({"a": first, "b": other})
    assert table.columns.tolist() == ["class_name", "support", "a", "b"]
    with pytest.raises(ValueError, match="other classes"):
        tables.per_class_f1_table({"a": first, "b": other.iloc[::-1]})


def test_report_html_inlines_every_figure_and_escapes_names():
    logits = np.eye(3)[[0, 1, 2, 0]]
    _, per_class, predictions = evaluate(logits, np.array([0, 1, 2, 1]), CLASSES,
                                         [f"{i}.png" for i in range(4)])
    png = b"\x89PNG fake"
    section = html.DatasetSection("<pets>", per_class.rename(columns={"f1": "lora"}), [
        html.MethodSection("lora", png, png, pd.DataFrame({"true_class": ["dog"]}), png)])
    comparison = tables.comparison_table([tables.result_row("<pets>", "lora", _metrics(0.75))])
    page = html.report_html(comparison, png, {"<pets>": html.dataset_section_html(section)},
                            {"model": "tiny"})
    assert page.count(f"data:image/png;base64,{base64.b64encode(png).decode()}") == 4
    assert '<table id="comparison"' in page and "<pets>" not in page and "&lt;pets&gt;" in page
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")


@pytest.mark.parametrize(("n_wrong", "n_right", "expected_wrong"), [(3, 40, 3), (40, 3, 13), (5, 5, 5)])
def test_sample_predictions_fill_up_from_the_other_kind(n_wrong, n_right, expected_wrong):
    pairs = [("cat", "dog")] * n_wrong + [("dog", "dog")] * n_right
    sample = figures.sample_predictions(_predictions(pairs), n=16)
    assert len(sample) == min(16, n_wrong + n_right)
    assert (~sample["correct"]).sum() == expected_wrong
