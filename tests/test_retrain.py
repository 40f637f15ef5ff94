"""Scheduled retraining end to end, in a temporary copy of the project (its own
mlflow.db, never the project's) with an image_folder dataset made here: the first
retrain promotes v1; added images are validated and encoded alone and train v2, which
beats the weak v1; a challenger made worse is kept out; predict uses the champion; a
run killed in training leaves the champion and the registry as they were, and the next
run resumes; a rollback points the alias back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from clip_lora_pipeline.core.sources.synthetic import render
from tests.conftest import copy_project, run_kedro

pytest.importorskip("mlflow")

from clip_lora_pipeline.core.registry import CHAMPION, Registry  # noqa: E402

CLASSES = ["red circle", "blue square", "green triangle", "purple ring"]
CELL = "shots_8_seed_1"
NAME = "photos-lora"
RETRAIN = """retrain: {dataset: photos, method: lora, metric: top1, min_improvement: 0.5,
          floor: 0.0, freeze_test: false}
"""
PREDICT = """predict: {input: data/01_raw/new_images, dataset: photos, model: champion,
          prompt_set: simple, top_k: 2}
"""


def _images(folder, first: int, count: int) -> None:
    for index, name in enumerate(CLASSES):
        sub = folder / name.replace(" ", "_")
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(first, first + count):
            render(name, i, 64, seed=index).save(sub / f"{i:04d}.png")


def _retrain(project, *params: str):
    args = ["run", "--env", "smoke", "--pipeline", "retrain"]
    if params:
        args += ["--params", ",".join(params)]
    result = run_kedro(project, *args, env={"COLUMNS": "300"})
    last = json.loads((project / "data/.fingerprints/_last_run.json").read_text())
    return last["ran"], result.stdout + result.stderr


def _registry(project) -> Registry:
    return Registry(NAME, f"sqlite:///{project / 'mlflow.db'}")


def _promotion(project) -> dict:
    path = next((project / "data/08_reporting").rglob("retrain_lora/promotion.json"))
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("retrain"))
    smoke = project / "conf/smoke"
    (smoke / "parameters_retrain.yml").write_text(RETRAIN)
    (smoke / "parameters_predict.yml").write_text(PREDICT)
    parameters = (smoke / "parameters.yml").read_text()
    assert "datasets:\n  - synthetic\n" in parameters
    (smoke / "parameters.yml").write_text(parameters.replace(
        "datasets:\n  - synthetic\n", "datasets: [photos]\ndataset_configs:\n"
        "  photos: {source: image_folder, root: data/01_raw/photos,\n"
        "           allow_repeats: true}\n"))
    _images(project / "data/01_raw/photos", 0, 36)
    return project


def test_the_first_retrain_registers_and_promotes_v1(project):
    ran, log = _retrain(project, "adaptation_methods.lora.max_steps=1")  # a weak v1
    assert f"photos.{CELL}.train_lora" in ran
    registry = _registry(project)
    assert [v.version for v in registry.versions()] == [1]
    assert registry.require(CHAMPION).version == 1
    assert _promotion(project)["decision"] == "promoted"
    assert "no champion yet" in _promotion(project)["reason"]


def test_added_images_are_the_only_ones_validated_and_encoded_and_train_v2(project):
    _images(project / "data/01_raw/photos", 36, 12)  # 48 per class: a third more
    ran, log = _retrain(project)
    assert f"photos.{CELL}.train_lora" in ran
    assert "validate: 48 of 192 images checked, 144 read back" in log  # 12 new per class
    # the champion v1, scored last run, scores only the new test images
    test = pd.read_parquet(project / "data/03_primary/photos/test.parquet")
    new = test["path"].str.extract(r"(\d{4})\.png$")[0].astype(int).ge(36).sum()
    assert 0 < new < len(test)
    assert f"Scoring test: {len(test) - new} of {len(test)} images reused" in log
    promotion = _promotion(project)
    assert promotion["challenger_version"] == 2 and promotion["champion_version"] == 1
    assert promotion["decision"] == "promoted", promotion["reason"]
    assert _registry(project).require(CHAMPION).version == 2
    # the champion v1 was scored on the same, grown test split as v2
    assert promotion["challenger_n"] == promotion["champion_n"]


def test_a_worse_challenger_is_not_promoted(project):
    _, log = _retrain(project, "adaptation_methods.lora.max_steps=1")
    promotion = _promotion(project)
    assert promotion["challenger_version"] == 3 and promotion["decision"] == "kept"
    assert _registry(project).require(CHAMPION).version == 2


def test_predict_uses_the_champion(project):
    _images(project / "data/01_raw/new_images", 100, 1)
    result = run_kedro(project, "run", "--env", "smoke", "--pipeline", "predict",
                       env={"COLUMNS": "300"})
    assert f"Predicting with {NAME} version 2 (champion)" in result.stdout + result.stderr
    table = pd.read_parquet(project / "data/07_model_output/predict/predictions.parquet")
    assert len(table) == len(CLASSES)


def test_a_killed_retrain_leaves_the_champion_and_the_next_one_resumes(project, tmp_path):
    before = set(project.rglob("state.pt"))
    args = ["run", "--env", "smoke", "--pipeline", "retrain", "--params",
            "adaptation_methods.lora.max_steps=200"]
    with open(tmp_path / "log.txt", "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "kedro", *args], cwd=project, stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "COLUMNS": "300"})
        deadline = time.monotonic() + 400
        while not set(project.rglob("state.pt")) - before:  # its first checkpoint
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    registry = _registry(project)
    assert [v.version for v in registry.versions()] == [1, 2, 3]
    assert registry.require(CHAMPION).version == 2
    ran, log = _retrain(project, "adaptation_methods.lora.max_steps=200")
    assert "resuming from" in log
    assert _promotion(project)["challenger_version"] == 4


def test_a_rollback_points_the_champion_back(project):
    registry = _registry(project)
    before = registry.require(CHAMPION).version
    assert registry.rollback(1).version == 1
    history = pd.read_parquet(next((project / "data/08_reporting").rglob(
        "retrain_lora/promotion_history.parquet")))
    assert set(history["version"]) == {1, 2, 3, 4}
    assert set(history.loc[history["aliases"].str.contains(CHAMPION), "version"]) == {before}
    assert list(history["decision"]) == ["promoted", "promoted", "kept", "promoted"]
    registry.set_alias(CHAMPION, before)
