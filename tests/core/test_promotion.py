"""The promotion gate: floor, margin, first promotion, settings checks, the record."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from clip_lora_pipeline.core.promotion import (
    KEPT,
    PROMOTED,
    RetrainSettings,
    Score,
    decide,
    record,
)

SETTINGS = RetrainSettings(dataset="d", method="lora", min_improvement=0.5, floor=50.0)


def _score(value: float, n: int = 1000) -> Score:
    return Score(value, value - 0.01, value + 0.01, n)


def test_the_first_challenger_is_promoted_if_it_clears_the_floor():
    assert decide(1, _score(0.6), None, None, SETTINGS)[0] == PROMOTED
    decision, reason = decide(1, _score(0.4), None, None, SETTINGS)
    assert decision == KEPT and "below the floor 50.0%" in reason


def test_the_margin_over_the_champion_decides():
    assert decide(2, _score(0.706), 1, _score(0.700), SETTINGS)[0] == PROMOTED
    decision, reason = decide(2, _score(0.703), 1, _score(0.700), SETTINGS)
    assert decision == KEPT and "+0.30 points, less than the 0.5 required" in reason
    assert decide(2, _score(0.69), 1, _score(0.70), SETTINGS)[0] == KEPT
    # a better challenger below the floor is still kept
    assert decide(2, _score(0.45), 1, _score(0.30), SETTINGS)[0] == KEPT


def test_a_nan_score_is_never_promoted():
    assert decide(1, _score(math.nan), None, None, RetrainSettings("d", "lora"))[0] == KEPT


def test_scores_carry_wilson_intervals_and_subsets():
    predictions = pd.DataFrame({"path": list("abcd"), "correct": [True, True, True, False]})
    score = Score.of(predictions, "top1", {"top1": 0.75})
    assert score.value == 0.75 and score.n == 4 and 0 < score.low < 0.75 < score.high < 1
    subset = Score.of(predictions, "macro_f1", {"macro_f1": 0.5}, paths={"a", "d"})
    assert subset.value == 0.5 and subset.n == 2  # a subset is always scored on top-1
    other = Score.of(predictions, "macro_f1", {"macro_f1": 0.5})
    assert other.value == 0.5 and math.isnan(other.low)


@pytest.mark.parametrize("params, match", [
    ({"metric": "f2"}, "retrain.metric must be one of"),
    ({"floor": 150}, "points"),
    ({"min_improvement": -1}, "cannot be negative"),
    ({"dataset": "other"}, "not one of the configured datasets"),
    ({"method": "vpt"}, "not one of the adaptation methods"),
    ({"shots": 4}, "unknown keys"),
])
def test_settings_name_the_wrong_key(params, match):
    with pytest.raises(ValueError, match=match):
        RetrainSettings.from_params({"dataset": "d", "method": "lora", **params}, ["d"],
                                    ["lora", "bitfit"])


def test_the_record_is_flat_and_json_ready():
    row = record(2, 1, {"challenger": _score(0.7), "champion": None}, PROMOTED, "why",
                 SETTINGS)
    assert row["challenger_version"] == 2 and row["champion_value"] is None
    assert row["challenger_n"] == 1000 and row["decision"] == PROMOTED
