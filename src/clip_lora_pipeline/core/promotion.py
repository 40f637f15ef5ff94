"""The promotion gate of scheduled retraining: the challenger replaces the champion only
if it clears an absolute floor and beats the champion by a margin, both scored on the
same test set.

Scores are fractions in [0, 1]; the floor and the margin are set in points (percent),
as published tables and the report show them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from clip_lora_pipeline.core.errors import SettingsError
from clip_lora_pipeline.core.metrics import accuracy_interval

METRICS = ("top1", "top5", "mean_per_class_recall", "macro_f1")
PROMOTED, KEPT = "promoted", "kept"


@dataclass(frozen=True)
class RetrainSettings:
    """``retrain:`` in conf/base/parameters_retrain.yml."""

    dataset: str
    method: str
    metric: str = "top1"
    min_improvement: float = 0.5
    floor: float = 0.0
    freeze_test: bool = False

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise SettingsError(f"retrain.metric must be one of {METRICS}, got {self.metric!r}.")
        if not 0 <= self.floor <= 100:
            raise SettingsError(f"retrain.floor is in points (0-100), got {self.floor}.")
        if self.min_improvement < 0:
            raise SettingsError("retrain.min_improvement is in points and cannot be negative, "
                                f"got {self.min_improvement}.")

    @classmethod
    def from_params(cls, params: dict[str, Any], datasets: list[str],
                    methods: list[str]) -> RetrainSettings:
        unknown = sorted(set(params) - set(cls.__dataclass_fields__))
        if unknown:
            raise SettingsError(f"retrain has unknown keys {unknown}; it takes "
                                f"{sorted(cls.__dataclass_fields__)}.")
        settings = cls(**params)
        if settings.dataset not in datasets:
            raise SettingsError(f"retrain.dataset {settings.dataset!r} is not one of the "
                                f"configured datasets {datasets}.")
        if settings.method not in methods:
            raise SettingsError(f"retrain.method {settings.method!r} is not one of the "
                                f"adaptation methods {methods} (adaptation_methods).")
        return settings


@dataclass(frozen=True)
class Score:
    """A model's score on a test set, with the 95% Wilson interval for top-1."""

    value: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, predictions: pd.DataFrame, metric: str, metrics: dict[str, float],
           paths: set[str] | None = None) -> Score:
        """From a predictions table (``path``, ``correct``) and its metrics; ``paths``:
        only these test images (top-1 then, the only metric a subset can recompute)."""
        if paths is not None:
            predictions = predictions[predictions["path"].isin(paths)]
            metric = "top1"
        n, correct = len(predictions), int(predictions["correct"].sum())
        if metric != "top1":
            return cls(float(metrics[metric]), math.nan, math.nan, n)
        low, high = accuracy_interval(correct, n)
        return cls(correct / n if n else math.nan, low, high, n)


def decide(challenger: int, challenger_score: Score, champion: int | None,
           champion_score: Score | None, settings: RetrainSettings) -> tuple[str, str]:
    """(PROMOTED or KEPT, the reason in words)."""
    name = f"{settings.metric} {100 * challenger_score.value:.2f}%"
    if not challenger_score.value * 100 >= settings.floor:  # also catches nan
        return KEPT, f"challenger v{challenger} {name} is below the floor {settings.floor}%"
    if champion is None or champion_score is None:
        return PROMOTED, f"no champion yet, and challenger v{challenger} {name} clears the floor"
    gain = 100 * (challenger_score.value - champion_score.value)
    versus = (f"challenger v{challenger} {name} vs champion v{champion} "
              f"{100 * champion_score.value:.2f}%: {gain:+.2f} points")
    if gain >= settings.min_improvement:
        return PROMOTED, f"{versus}, at least the {settings.min_improvement} required"
    return KEPT, f"{versus}, less than the {settings.min_improvement} required"


def record(challenger: int, champion: int | None, scores: dict[str, Score | None],
           decision: str, reason: str, settings: RetrainSettings) -> dict[str, Any]:
    """One decision as the promotion record keeps it (JSON-ready, flat)."""
    row: dict[str, Any] = {
        "decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "challenger_version": challenger, "champion_version": champion,
        "decision": decision, "reason": reason, "metric": settings.metric,
        "min_improvement": settings.min_improvement, "floor": settings.floor,
        "freeze_test": settings.freeze_test,
    }
    for key, score in scores.items():
        for field, value in (asdict(score) if score else dict.fromkeys(
                ("value", "low", "high", "n"))).items():
            row[f"{key}_{field}"] = None if value is None or (
                isinstance(value, float) and math.isnan(value)) else value
    return row
