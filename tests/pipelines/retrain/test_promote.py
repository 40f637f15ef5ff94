"""The promote node on a registry of its own (sqlite under tmp_path): a decision is
applied once and re-applied after a kill, a champion that changed mid-run stops it, and
freeze_test decides on the test images of the last promotion."""

from __future__ import annotations

import json

import pandas as pd
import pytest

pytest.importorskip("mlflow")

from clip_lora_pipeline.core.registry import CHAMPION, Registry  # noqa: E402
from clip_lora_pipeline.pipelines.retrain.nodes import TEST_LIST, promote  # noqa: E402

RETRAIN = {"dataset": "d", "method": "lora", "metric": "top1", "min_improvement": 0.5,
           "floor": 0.0, "freeze_test": False}


@pytest.fixture
def registry(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # artefacts under tmp_path
    registry = Registry("d-lora", uri)
    for index in range(3):
        (tmp_path / f"a{index}.bin").write_bytes(bytes([index]) * 10)
        registry.register(tmp_path / f"a{index}.bin", {"index": index})
    return registry


def _predictions(correct: list[bool], prefix: str = "img") -> pd.DataFrame:
    return pd.DataFrame({"path": [f"{prefix}{i}" for i in range(len(correct))],
                         "correct": correct})


def _promote(version: int, challenger: list[bool], champion: dict, champion_correct,
             **settings):
    predictions = _predictions(challenger)
    metrics = {"top1": float(predictions["correct"].mean())}
    return promote({"version": version}, metrics, predictions, champion,
                   _predictions(champion_correct), {**RETRAIN, **settings})


def test_a_decision_is_applied_once_and_reapplied_after_a_kill(registry):
    row = _promote(1, [True] * 6 + [False] * 4, {"version": None}, [])
    assert row["decision"] == "promoted" and registry.require(CHAMPION).version == 1
    assert json.loads(registry.read_text(registry.require(1), TEST_LIST)) == [
        f"img{i}" for i in range(10)]
    # v2: decided (tagged) but killed before the alias moved
    champion = {"version": 1, "top1": 0.6}
    row = _promote(2, [True] * 9 + [False], champion, [True] * 6 + [False] * 4)
    assert row["decision"] == "promoted"
    registry.set_alias(CHAMPION, 1)  # as if the move never happened
    again = _promote(2, [False] * 10, champion, [True] * 10)  # other scores: ignored
    assert again == row and registry.require(CHAMPION).version == 2


def test_a_champion_that_changed_during_the_run_stops_it(registry):
    _promote(1, [True] * 10, {"version": None}, [])
    with pytest.raises(RuntimeError, match="changed during this run"):
        _promote(2, [True] * 10, {"version": None}, [])
    assert registry.require(CHAMPION).version == 1
    assert "record" not in registry.require(2).tags  # undecided: the next run decides


def test_freeze_test_decides_on_the_test_images_of_the_last_promotion(registry):
    _promote(1, [True] * 5 + [False] * 5, {"version": None}, [])  # test: img0..img9
    # The test split grew by ten images. On all twenty the challenger is better; on the
    # ten of the last promotion it is worse.
    challenger = [True] * 4 + [False] * 6 + [True] * 10
    champion = {"version": 1, "top1": 0.5, "test_at_promotion": [f"img{i}" for i in range(10)]}
    row = _promote(2, challenger, champion, [True] * 5 + [False] * 5 + [False] * 10,
                   freeze_test=True)
    assert row["decision"] == "kept"
    assert row["challenger_frozen_value"] == 0.4 and row["champion_frozen_value"] == 0.5
    assert row["challenger_value"] == 0.7 and row["champion_n"] == 20
    unfrozen = _promote(3, challenger, champion, [True] * 5 + [False] * 15)
    assert unfrozen["decision"] == "promoted"
