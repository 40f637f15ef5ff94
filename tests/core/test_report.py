"""Report figures, tables and HTML from hand-made predictions with known answers."""

from __future__ import annotations

import base64
import io
import math
import subprocess

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer
from PIL import Image

from clip_lora_pipeline.core.metrics import accuracy_interval, evaluate
from clip_lora_pipeline.core.report import figures, html, samples, tables
from clip_lora_pipeline.core.report import run_record as rr
from clip_lora_pipeline.core.report.methods import method_description
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


def test_most_confused_pairs_rank_by_share_of_the_true_class():
    # cat->dog has the most images (3 of 9), fox->cat the largest share (2 of 3)
    matrix = np.array([[5, 3, 1], [0, 9, 0], [2, 0, 1]])
    pairs = figures.most_confused_pairs(matrix, CLASSES)
    assert list(zip(pairs["true_class"], pairs["predicted_class"], pairs["count"])) == [
        ("fox", "cat", 2), ("cat", "dog", 3), ("cat", "fox", 1)]
    assert pairs["fraction_of_true_class"].tolist() == pytest.approx([2 / 3, 1 / 3, 1 / 9])


def test_most_confused_pairs_break_equal_shares_by_count():
    # cat->fox and dog->fox are both half their class; dog's has more images
    matrix = np.array([[1, 0, 1], [0, 3, 3], [0, 0, 4]])
    pairs = figures.most_confused_pairs(matrix, CLASSES)
    assert list(zip(pairs["true_class"], pairs["count"])) == [("dog", 3), ("cat", 1)]


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


def test_prediction_grid_html_captions_as_text_and_jpeg_thumbnails(tmp_path):
    write_image(tmp_path / "00.png", size=(640, 480))
    predictions = _predictions([("cat", "cat"), ("<dog>", "fox")])  # 01.png does not exist
    grid = samples.prediction_grid_html(predictions, tmp_path, "grid <b>")
    data = grid.split("data:image/jpeg;base64,")[1].split('"')[0]
    thumbnail = Image.open(io.BytesIO(base64.b64decode(data)))
    assert thumbnail.format == "JPEG" and max(thumbnail.size) == samples.THUMBNAIL_PX
    assert grid.count("<figure class=\"sample correct\"") == 1
    assert grid.count("<figure class=\"sample wrong\"") == 1
    assert "pred: fox (0.50)" in grid and "cannot open 01.png" in grid
    assert "&lt;dog&gt;" in grid and "<dog>" not in grid and "grid &lt;b&gt;" in grid


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
    assert markdown[0].startswith("| dataset | method | top-1 (95% CI) | test images |")
    assert markdown[1].startswith("|---|---|---:|---:|")
    low, high = accuracy_interval(7, 10)
    assert markdown[3] == (f"| pets | linear_probe | 0.7000 ({low:.4f}–{high:.4f}) | 10 | 0.7000 "
                           "| 0.7000 | 2,050 | 4 | 1.5 | — |")


# Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score).
@pytest.mark.parametrize(("correct", "n", "low", "high"), [
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718)])
def test_accuracy_interval_is_the_wilson_score_interval(correct, n, low, high):
    assert accuracy_interval(correct, n) == pytest.approx((low, high), rel=2e-3, abs=1e-4)


def test_accuracy_interval_widens_with_the_level_and_refuses_impossible_counts():
    low90, high90 = accuracy_interval(30, 40, level=0.90)
    low99, high99 = accuracy_interval(30, 40, level=0.99)
    assert low99 < low90 < 0.75 < high90 < high99
    assert all(math.isnan(v) for v in accuracy_interval(0, 0))
    with pytest.raises(ValueError, match="0..n"):
        accuracy_interval(11, 10)


def test_evaluate_and_result_rows_carry_the_interval():
    metrics, _, _ = evaluate(np.eye(3)[[0, 1, 2, 0]], np.array([0, 1, 2, 1]), CLASSES,
                             [f"{i}.png" for i in range(4)])
    assert (metrics["top1_ci_low"], metrics["top1_ci_high"]) == accuracy_interval(3, 4)
    row = tables.result_row("pets", "lora", metrics)
    assert (row["top1_ci_low"], row["n_classes"], row["n_test_images"]) == (
        metrics["top1_ci_low"], 3, 4)
    # metrics written before the interval was stored: the same interval from top-1 x n
    old = tables.result_row("pets", "lora", _metrics(0.7))
    assert (old["top1_ci_low"], old["top1_ci_high"]) == pytest.approx(accuracy_interval(7, 10))
    assert math.isnan(old["n_classes"])


def _chart_table() -> pd.DataFrame:
    rows = [tables.result_row(d, m, _metrics(top1, n_classes=k, n_images=n))
            for d, k, n in [("pets", 4, 40), ("cars", 10, 200)]
            for m, top1 in [("zero_shot_simple", 0.5), ("lora", 0.75)]]
    return tables.comparison_table(rows)


def test_accuracy_chart_draws_intervals_and_each_datasets_chance_level():
    table = _chart_table()
    ax = figures.accuracy_chart(table).axes[0]
    chance = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert sorted(line.get_ydata()[0] for line in chance) == pytest.approx([0.1, 0.25])
    # the chance line spans its own dataset's group of bars only
    pets = next(line for line in chance if line.get_ydata()[0] == pytest.approx(0.25))
    assert max(abs(x) for x in pets.get_xdata()) < 0.5
    assert "chance (1 / classes)" in [t.get_text() for t in ax.get_legend().get_texts()]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert all(c.errorbar is not None for c in bars)
    segments = bars[1].errorbar.lines[2][0].get_segments()  # lora's bars
    lora = table[table["method"] == "lora"]
    np.testing.assert_allclose([seg[:, 1] for seg in segments],
                               lora[["top1_ci_low", "top1_ci_high"]].to_numpy(), rtol=1e-9)


def test_accuracy_chart_of_old_tables_has_no_chance_line_or_intervals():
    table = _chart_table().drop(columns=["n_classes", "top1_ci_low", "top1_ci_high"])
    ax = figures.accuracy_chart(table).axes[0]
    assert len(ax.lines) == 0 and all(c.errorbar is None for c in ax.containers)


LORA = {"method": "lora", "head": "text", "lr": 2e-4,
        "lora": {"encoders": "vision", "matrices": ["q", "v"], "r": 4, "alpha": 8}}


@pytest.mark.parametrize(("method", "settings", "expected"), [
    ("zero_shot_ensemble", {"templates": ["a {}."] * 80}, ["'ensemble'", "80 prompt"]),
    ("linear_probe", {"c_min_log10": -3, "c_max_log10": 3, "c_steps": 13},
     ["Logistic regression", "13 values from 1e-3 to 1e3"]),
    ("text_init_head", {"prompt_set": "simple"}, ["zero-shot text", "'simple'"]),
    ("lora", LORA, ["LoRA", "r=4", "alpha=8", "q+v", "image encoder", "rest default"]),
    ("bias_only", {"method": "bitfit", "bitfit": {"encoders": "text", "layernorm": True}},
     ["BitFit", "LayerNorm", "the text encoder"]),
    ("prompt_tuning", {"method": "my_prompts", "n_ctx": 16}, ["'my_prompts'", "n_ctx=16"]),
    ("coop_csc", {"method": "coop", "optimizer": "sgd", "coop": {"class_specific": True}},
     ["CoOp", "default learned context", "one set per class", "sgd optimizer",
      "lr default"]),
])
def test_method_description_names_the_kind_and_its_settings(method, settings, expected):
    line = method_description(method, settings)
    assert "\n" not in line and all(part in line for part in expected), line


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
        html.MethodSection("lora", png, "<figure>grid</figure>",
                           pd.DataFrame({"true_class": ["dog"]}), png)])
    comparison = tables.comparison_table([tables.result_row("<pets>", "lora", _metrics(0.75))])
    page = html.report_html(comparison, png, {"<pets>": html.dataset_section_html(section)},
                            {"model": "tiny"})
    # chart, confusion matrix, training curves; the sample grid is HTML
    assert page.count(f"data:image/png;base64,{base64.b64encode(png).decode()}") == 3
    assert "<figure>grid</figure>" in page
    assert '<table id="comparison"' in page and "<pets>" not in page and "&lt;pets&gt;" in page
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")
    assert 'id="run-record"' not in page


def test_dataset_section_shows_the_most_confused_pairs_openly_and_the_html_grid():
    pairs = figures.most_confused_pairs(np.array([[5, 3, 1], [0, 9, 0], [2, 0, 1]]), CLASSES)
    section = html.DatasetSection("pets", pd.DataFrame({"class_name": CLASSES}), [
        html.MethodSection("lora", b"png", prediction_grid="<figure>grid</figure>",
                           most_confused=pairs, description="LoRA <r=2>")])
    page = html.dataset_section_html(section)
    confused = page.index("Most-confused class pairs (lora)")
    assert page.rfind("<details", 0, confused) == -1  # not folded away
    assert page.index("fox", confused) < page.index("dog", confused)  # order by share
    assert "share of the true class" in page and "<figure>grid</figure>" in page
    assert "LoRA &lt;r=2&gt;" in page


def _record(tmp_path) -> dict:
    return rr.run_record(
        rr.environment_record(tmp_path), model="ViT-B-16 <openai>", shots=16,
        seeds={"few_shot_seed": 1, "split_seed": 0},
        methods={"zero_shot_simple": {"templates": ["a photo of a {}."]}, "lora": LORA},
        prompt_templates={"simple": ["a photo of a {}."],
                          "ensemble": {d: [f"a <b>{i}</b> {{}}." for i in range(80)]
                                       for d in ("pets", "cars")},
                          "dataset": {"pets": ["a pet: {}."], "cars": ["a car: {}."]}},
        splits={"pets": rr.split_counts(
            rejected=pd.DataFrame({"path": ["x.jpg"]}),
            train=pd.DataFrame({"label": [0, 1]}), val=pd.DataFrame({"label": [0, 1, 1]}),
            test=pd.DataFrame({"label": [0, 1, 2, 2]}))})


def test_run_record_renders_settings_splits_prompts_and_versions_escaped(tmp_path):
    record = _record(tmp_path)
    assert record["splits"]["pets"] == {"train": 2, "val": 3, "test": 4, "classes": 3,
                                        "rejected": 1}
    page = html.report_html(_chart_table(), b"png", {}, {"model": "tiny"}, run_record=record)
    section = page[page.index('<section id="run-record">'):]
    assert "<b>" not in section and "a &lt;b&gt;79&lt;/b&gt; {}." in section
    assert "ViT-B-16 &lt;openai&gt;" in section and section.count("all 80") == 1
    assert "<td>ensemble</td><td>pets, cars</td><td>80</td>" in section
    assert "<td>dataset</td><td>cars</td><td>1</td><td>a car: {}.</td>" in section
    assert "<td>pets</td><td>2</td><td>3</td><td>4</td><td>3</td><td>1</td>" in section
    assert "r=4" in section and "encoders=vision" in section
    assert f"<td>numpy</td><td>{np.__version__}</td>" in section
    assert "<td>git commit</td><td>unknown</td>" in section  # tmp_path is no repository
    assert method_description("lora", LORA) in page  # also beside the comparison
    assert "<script" not in page


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                    *args], check=True, capture_output=True)


def test_environment_record_reads_the_commit_and_dirty_state(tmp_path, monkeypatch):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("1")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], text=True,
                          capture_output=True, check=True).stdout.strip()
    record = rr.environment_record(tmp_path)
    assert record["git"] == {"commit": head, "dirty": False}
    assert record["versions"]["python"].count(".") == 2 and "torch" in record["versions"]
    assert record["device"]["cuda"] or record["device"]["cpu"]
    (tmp_path / "a.txt").write_text("2")
    assert rr.git_state(tmp_path)["dirty"] is True

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")
    monkeypatch.setattr(rr.subprocess, "run", no_git)
    assert rr.git_state(tmp_path) == {"commit": "unknown", "dirty": "unknown"}


@pytest.mark.parametrize(("n_wrong", "n_right", "expected_wrong"), [(3, 40, 3), (40, 3, 13), (5, 5, 5)])
def test_sample_predictions_fill_up_from_the_other_kind(n_wrong, n_right, expected_wrong):
    pairs = [("cat", "dog")] * n_wrong + [("dog", "dog")] * n_right
    sample = figures.sample_predictions(_predictions(pairs), n=16)
    assert len(sample) == min(16, n_wrong + n_right)
    assert (~sample["correct"]).sum() == expected_wrong
