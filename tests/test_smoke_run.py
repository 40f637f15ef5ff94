"""End to end: ``kedro run --env smoke`` in a temporary copy of the project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import SMOKE_ADAPTATIONS, run_kedro


@pytest.fixture(scope="module")
def project(smoke_project) -> Path:
    return smoke_project


def _n_test(project: Path) -> int:
    """The size of the test split, which the hashed split makes vary around 20%."""
    return len(pd.read_parquet(project / "data/03_primary/synthetic/test.parquet"))


# Kedro's node selection itself: every selected node runs, as it did before the
# fingerprint runner (which skips a selected node whose inputs and code are unchanged;
# tests/test_incremental_run.py covers that).


def _mtimes(project: Path) -> dict[str, int]:
    return {
        str(p.relative_to(project)): p.stat().st_mtime_ns
        for p in (project / "data").rglob("*.parquet")
    }


@pytest.mark.slow
def test_smoke_run_writes_the_manifests(project):
    train = pd.read_parquet(project / "data/05_model_input/synthetic/shots_8_seed_1/train.parquet")
    assert train.groupby("class_name").size().tolist() == [8] * 6
    parts = {name: pd.read_parquet(project / f"data/03_primary/synthetic/{name}.parquet")
             for name in ("train_pool", "val_pool", "test")}
    # 50 images per class (conf/base), each in the split its path's hash says
    assert sum(len(part) for part in parts.values()) == 300
    for name, part in parts.items():
        assert part["class_name"].nunique() == 6, name
    val = pd.read_parquet(project / "data/05_model_input/synthetic/shots_8_seed_1/val.parquet")
    assert val.groupby("class_name").size().tolist() == [4] * 6
    for name in ("manifest", "images", "rejected_images"):
        assert (project / f"data/02_intermediate/synthetic/{name}.parquet").exists()


@pytest.mark.slow
def test_smoke_run_evaluates_every_prompt_set_zero_shot(project):
    features = project / "data/04_feature/synthetic/clip-lora-tiny__random"
    n_test = _n_test(project)
    assert len(pd.read_parquet(features / "test_embeddings.parquet")) == n_test
    for prompt_set in ("simple", "ensemble", "dataset"):
        out = project / f"data/07_model_output/synthetic/clip-lora-tiny__random/zero_shot_{prompt_set}"
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["n_images"] == n_test and 0 <= metrics["top1"] <= 1
        assert len(pd.read_parquet(out / "predictions.parquet")) == n_test


@pytest.mark.slow
def test_smoke_run_trains_and_evaluates_every_method(project):
    out = project / "data/07_model_output/synthetic/clip-lora-tiny__random/shots_8_seed_1"
    models = project / "data/06_models/synthetic/clip-lora-tiny__random/shots_8_seed_1"
    n_test = _n_test(project)
    for method in ("linear_probe", "text_init_head", "tip_adapter", "tip_adapter_f", "clap",
                   "meta_adapter", *SMOKE_ADAPTATIONS):
        metrics = json.loads((out / method / "metrics.json").read_text())
        assert metrics["n_images"] == n_test
        # Tip-Adapter trains nothing: its cache is the few-shot features themselves
        assert metrics["trainable_parameters"] > 0 or method == "tip_adapter"
    for method, entry in SMOKE_ADAPTATIONS.items():
        assert (models / method / "adapter.safetensors").exists()
        # learned prompts (VPT, CoOp) cannot merge: their export is the adapter as trained
        assert (models / method / "merged_open_clip.safetensors").exists()
        assert len(pd.read_parquet(out / method / "history.parquet")) == entry["max_steps"]


@pytest.mark.slow
def test_one_node_reruns_alone(project):
    before = _mtimes(project)
    run_kedro(project, "run", "--env", "smoke", "--nodes", "synthetic.split")
    after = _mtimes(project)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {
        "data/03_primary/synthetic/train_pool.parquet",
        "data/03_primary/synthetic/val_pool.parquet",
        "data/03_primary/synthetic/test.parquet",
    }


@pytest.mark.slow
def test_the_report_node_reruns_alone_when_named(project):
    report = project / "data/08_reporting/clip-lora-tiny__random/shots_8_seed_1/report_synthetic.html"
    before = report.stat().st_mtime_ns
    # unchanged, but named with --nodes: a request to re-run it
    run_kedro(project, "run", "--env", "smoke", "--nodes", "shots_8_seed_1.report")
    assert report.stat().st_mtime_ns != before


@pytest.mark.slow
def test_a_deleted_output_is_remade_and_nothing_after_it_reruns(project):
    (project / "data/05_model_input/synthetic/shots_8_seed_1/val.parquet").unlink()
    before = _mtimes(project)
    result = run_kedro(project, "run", "--env", "smoke", env={"COLUMNS": "300"})
    after = _mtimes(project)
    changed = {k for k in after if before.get(k) != after[k]}
    # few_shot writes its sample again, the same bytes: what read it is still valid
    assert changed == {
        "data/05_model_input/synthetic/shots_8_seed_1/val.parquet",
        "data/05_model_input/synthetic/shots_8_seed_1/train.parquet",
    }
    assert "output synthetic.shots_8_seed_1.val is missing" in result.stdout + result.stderr


@pytest.mark.slow
def test_runtime_shots_change_the_cell_and_its_output_path(project):
    run_kedro(project, "run", "--env", "smoke", "--nodes", "synthetic.shots_2_seed_1.few_shot",
              "--params", "shots=2")
    train = pd.read_parquet(project / "data/05_model_input/synthetic/shots_2_seed_1/train.parquet")
    assert train.groupby("class_name").size().tolist() == [2] * 6


@pytest.mark.slow
def test_registry_lists_the_data_pipeline(project):
    result = run_kedro(project, "registry", "list")
    assert "data" in result.stdout and "__default__" in result.stdout
    env = {**os.environ, "KEDRO_ENV": "smoke"}
    described = subprocess.run(
        [sys.executable, "-m", "kedro", "registry", "describe", "data"], cwd=project,
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert "synthetic.split" in described.stdout, described.stderr[-2000:]


@pytest.mark.slow
def test_predict_on_a_folder_with_unreadable_files(project):
    source = project / "data/01_raw/synthetic"
    new = project / "data/01_raw/new_images"  # predict.input in conf/smoke
    good = sorted(p.relative_to(source).as_posix() for p in source.rglob("*.png"))[:3]
    for path in good:
        (new / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / path, new / path)
    (new / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 20)
    (new / "readme.txt").write_text("not an image")
    run_kedro(project, "run", "--env", "smoke", "--pipeline", "predict")
    out = project / "data/07_model_output/predict"
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert predictions["file"].tolist() == good
    assert predictions.columns.tolist()[-2:] == ["class_5", "prob_5"]
    assert ((predictions["confidence"] > 0) & (predictions["confidence"] <= 1)).all()
    rejected = pd.read_parquet(out / "rejected_images.parquet")
    assert sorted(rejected["path"]) == ["corrupt.jpg", "readme.txt"]
    assert pd.read_csv(out / "predictions.csv")["file"].tolist() == good

    # --params deep-merges into the environment's 'predict' entry: one file, zero-shot.
    run_kedro(project, "run", "--env", "smoke", "--pipeline", "predict", "--params",
           f"predict.model=zero_shot,predict.top_k=2,predict.input={new / good[0]}")
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert predictions["file"].tolist() == [Path(good[0]).name]
    assert predictions.columns.tolist()[-2:] == ["class_2", "prob_2"]
    assert pd.read_parquet(out / "rejected_images.parquet").empty
