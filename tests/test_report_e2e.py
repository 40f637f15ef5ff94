"""The smoke run's reports: every method has its figures and tables, report.html loads
in a real browser without errors, kedro-viz builds, and the notebook runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import SMOKE_ADAPTATIONS, run_kedro

REPORTS = Path("data/08_reporting/clip-lora-tiny__random/shots_8_seed_1")
FEATURES = ["linear_probe", "text_init_head", "tip_adapter", "tip_adapter_f", "clap",
            "meta_adapter"]
ADAPTATIONS = list(SMOKE_ADAPTATIONS)  # each has training curves
METHODS = ["zero_shot_simple", "zero_shot_ensemble", "zero_shot_dataset", *FEATURES,
           *ADAPTATIONS]
SCREENSHOT_DIR_ENV = "REPORT_SCREENSHOT_DIR"


@pytest.mark.slow
def test_smoke_run_reports_every_method(smoke_project):
    reports = smoke_project / REPORTS
    # the test split's size varies around 20% of the images (a hash of each path)
    n_test = len(pd.read_parquet(smoke_project / "data/03_primary/synthetic/test.parquet"))
    comparison = pd.read_parquet(reports / "comparison_synthetic.parquet")
    assert comparison["method"].tolist() == METHODS
    assert (comparison["dataset"] == "synthetic").all()
    for method in METHODS:
        metrics = json.loads((smoke_project / "data/07_model_output/synthetic/clip-lora-tiny__random"
                              / ("" if method.startswith("zero_shot") else "shots_8_seed_1")
                              / method / "metrics.json").read_text())
        row = comparison.set_index("method").loc[method]
        assert row["top1"] == metrics["top1"]
        folder = reports / "synthetic" / method
        for png in ["confusion_matrix.png"] + (
                ["training_curves.png"] if method in ADAPTATIONS else []):
            assert (folder / png).read_bytes().startswith(b"\x89PNG"), folder / png
        assert (folder / "sample_predictions.html").read_text().count(
            "data:image/jpeg;base64,") == 16
        assert (folder / "most_confused_pairs.parquet").exists()
        assert row["n_test_images"] == n_test and row["n_classes"] == 6
        assert row["top1_ci_low"] <= row["top1"] <= row["top1_ci_high"]
    f1 = pd.read_parquet(reports / "synthetic/per_class_f1.parquet")
    assert f1.columns.tolist() == ["class_name", "support", *METHODS] and len(f1) == 6
    markdown = (reports / "comparison_synthetic.md").read_text()
    assert all(f"| synthetic | {m} |" in markdown for m in METHODS)
    assert (reports / "accuracy_synthetic.png").exists() and (reports / "report_synthetic.html").exists()
    record = json.loads((reports / "run_record_synthetic.json").read_text())
    assert record["splits"]["synthetic"]["test"] == n_test
    assert set(record["methods"]) == set(METHODS)
    assert record["environment"]["versions"]["torch"]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no Chromium on PATH: install Debian's "
                    "'chromium' package (apt-get install chromium); .ci/run does")
def test_report_opens_in_chromium_with_every_image_and_no_errors(smoke_project, tmp_path):
    from playwright.sync_api import sync_playwright

    report = smoke_project / REPORTS / "report_synthetic.html"
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=_chromium(),
            # as root in a container, and no background calls to a closed network
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        page.goto(report.as_uri(), wait_until="load")
        images = page.evaluate(
            "Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])")
        headers = page.locator("#comparison thead th").all_inner_texts()
        rows = page.locator("#comparison tbody tr").all_inner_texts()
        record = page.locator("#run-record").inner_text()
        screenshot = tmp_path / "report.png"
        page.screenshot(path=str(screenshot))
        browser.close()
    # accuracy chart, per method a confusion matrix and 16 sample thumbnails, per
    # adaptation method its training curves
    assert len(images) == 1 + 17 * len(METHODS) + len(ADAPTATIONS)
    assert [alt for alt, loaded in images if not loaded] == []
    assert headers[:3] == ["dataset", "method", "top-1 (95% CI)"]
    assert "git commit" in record and "How this run was made" in record
    assert [r.split("\t")[1] for r in rows] == METHODS
    assert problems == []
    assert screenshot.stat().st_size > 20_000
    target = __import__("os").environ.get(SCREENSHOT_DIR_ENV)
    if target:  # how the README's screenshot is made
        shutil.copy(screenshot, Path(target) / "report_screenshot.png")


@pytest.mark.slow
def test_kedro_viz_build_exports_every_pipeline_offline(smoke_project):
    run_kedro(smoke_project, "viz", "build", "--include-previews", env={"KEDRO_ENV": "smoke"})
    main = json.loads((smoke_project / "build/api/main").read_text())
    assert {p["id"] for p in main["pipelines"]} >= {
        "__default__", "data", "zero_shot", "feature_methods", "lora", "reporting", "sweep",
        "retrain"}
    retrain = json.loads((smoke_project / "build/api/pipelines/retrain").read_text())
    assert {"register_lora", "evaluate_champion_lora", "promote_lora", "model_history_lora",
            "train_lora", "validate"} <= {n["name"] for n in retrain["nodes"]
                                          if n["type"] == "task"}
    assert {"raw", "intermediate", "primary", "feature", "model", "reporting"} <= set(
        main["layers"])
    tasks = {n["name"]: n for n in main["nodes"] if n["type"] == "task"}
    for name in ("download", "encode_test", "encode_few_shot", "train_lora", "train_bitfit",
                 "linear_probe", "tip_adapter", "encode_views", "report_confusion_lora",
                 "comparison", "report"):
        assert name in tasks, sorted(tasks)
    assert "gpu" in tasks["train_lora"]["tags"]
    data = {n["name"]: n for n in main["nodes"] if n["type"] == "data"}
    assert data["shots_8_seed_1.synthetic.report_confusion_lora"]["layer"] == "reporting"
    assert data["shots_8_seed_1.report__synthetic"]["layer"] == "reporting"
    node_id = data["shots_8_seed_1.synthetic.report_confusion_lora"]["id"]
    detail = json.loads((smoke_project / "build/api/nodes" / node_id).read_text())
    assert detail["preview_type"] == "ImagePreview" and len(detail["preview"]) > 1000


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(smoke_project, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("KEDRO_ENV", "smoke")
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "1")
    notebook = nbformat.read(smoke_project / "notebooks/explore_run.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(smoke_project / "notebooks")}}).execute()
    outputs = ["".join(o.get("text", "") for o in cell.get("outputs", []))
               for cell in notebook.cells if cell.cell_type == "code"]
    assert "environment: smoke" in outputs[0]
    assert "synthetic: best method" in outputs[2]
    assert "(true class:" in outputs[3]
    images = [o for cell in notebook.cells for o in cell.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the confusion matrix and the classified image
