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

PROJECT = Path(__file__).resolve().parents[1]


def _kedro(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "kedro", *args], cwd=project, env=env,
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("project")
    shutil.copytree(PROJECT / "conf", copy / "conf", ignore=shutil.ignore_patterns("local"))
    (copy / "conf" / "local").mkdir()
    shutil.copytree(PROJECT / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT / "pyproject.toml", copy / "pyproject.toml")
    (copy / "data").mkdir()
    _kedro(copy, "run", "--env", "smoke")
    return copy


def _mtimes(project: Path) -> dict[str, int]:
    return {
        str(p.relative_to(project)): p.stat().st_mtime_ns
        for p in (project / "data").rglob("*.parquet")
    }


@pytest.mark.slow
def test_smoke_run_writes_the_manifests(project):
    train = pd.read_parquet(project / "data/05_model_input/synthetic/shots_8_seed_1/train.parquet")
    assert train.groupby("class_name").size().tolist() == [8] * 6
    test = pd.read_parquet(project / "data/03_primary/synthetic/test.parquet")
    assert len(test) == 36 and test["class_name"].nunique() == 6
    for name in ("manifest", "images", "rejected_images"):
        assert (project / f"data/02_intermediate/synthetic/{name}.parquet").exists()


@pytest.mark.slow
def test_smoke_run_evaluates_every_prompt_set_zero_shot(project):
    features = project / "data/04_feature/synthetic/clip-lora-tiny__random"
    assert len(pd.read_parquet(features / "test_embeddings.parquet")) == 36
    for prompt_set in ("simple", "ensemble", "dataset"):
        out = project / f"data/07_model_output/synthetic/clip-lora-tiny__random/zero_shot_{prompt_set}"
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["n_images"] == 36 and 0 <= metrics["top1"] <= 1
        assert len(pd.read_parquet(out / "predictions.parquet")) == 36


@pytest.mark.slow
def test_smoke_run_trains_and_evaluates_every_method(project):
    out = project / "data/07_model_output/synthetic/clip-lora-tiny__random/shots_8_seed_1"
    models = project / "data/06_models/synthetic/clip-lora-tiny__random/shots_8_seed_1"
    for method in ("linear_probe", "lora", "bitfit"):
        metrics = json.loads((out / method / "metrics.json").read_text())
        assert metrics["n_images"] == 36 and metrics["trainable_parameters"] > 0
    for method in ("lora", "bitfit"):
        assert (models / method / "adapter.safetensors").exists()
        assert (models / method / "merged_open_clip.safetensors").exists()
        assert len(pd.read_parquet(out / method / "history.parquet")) == 30


@pytest.mark.slow
def test_one_node_reruns_alone(project):
    before = _mtimes(project)
    _kedro(project, "run", "--env", "smoke", "--nodes", "synthetic.split")
    after = _mtimes(project)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {
        "data/03_primary/synthetic/train_pool.parquet",
        "data/03_primary/synthetic/val_pool.parquet",
        "data/03_primary/synthetic/test.parquet",
    }


@pytest.mark.slow
def test_only_missing_outputs_skips_finished_work(project):
    (project / "data/05_model_input/synthetic/shots_8_seed_1/val.parquet").unlink()
    before = _mtimes(project)
    _kedro(project, "run", "--env", "smoke", "--only-missing-outputs")
    after = _mtimes(project)
    assert {k for k in after if before.get(k) != after[k]} == {
        "data/05_model_input/synthetic/shots_8_seed_1/val.parquet",
        "data/05_model_input/synthetic/shots_8_seed_1/train.parquet",
    }


@pytest.mark.slow
def test_runtime_shots_change_the_output_path(project):
    _kedro(project, "run", "--env", "smoke", "--nodes", "synthetic.few_shot",
           "--params", "shots=2")
    train = pd.read_parquet(project / "data/05_model_input/synthetic/shots_2_seed_1/train.parquet")
    assert train.groupby("class_name").size().tolist() == [2] * 6


@pytest.mark.slow
def test_registry_lists_the_data_pipeline(project):
    result = _kedro(project, "registry", "list")
    assert "data" in result.stdout and "__default__" in result.stdout
    env = {**os.environ, "KEDRO_ENV": "smoke"}
    described = subprocess.run(
        [sys.executable, "-m", "kedro", "registry", "describe", "data"], cwd=project,
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert "synthetic.split" in described.stdout, described.stderr[-2000:]
