"""Scheduled retraining: register the freshly trained adapter as the challenger, score
the champion on the same test set, promote or not, and keep the history.

The champion lives in the MLflow registry, outside the catalog, so the nodes that read
it carry the ``volatile`` tag: the fingerprint runner runs them every time."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from clip_lora_pipeline.core.adapted_eval import score_adapter
from clip_lora_pipeline.core.promotion import (
    PROMOTED,
    RetrainSettings,
    Score,
    decide,
    record,
)
from clip_lora_pipeline.core.registry import (
    CHALLENGER,
    CHAMPION,
    Registry,
    registered_name,
)
from clip_lora_pipeline.datasets import SafetensorsDataset

logger = logging.getLogger(__name__)

TEST_LIST = "retrain/test_images.json"  # the test images at a promotion, in its run
DATA_FILE = "retrain/data.json"  # what a version was trained on


def _registry(retrain: dict[str, Any]) -> Registry:
    return Registry(registered_name(retrain["dataset"], retrain["method"]))


def _identity(table: pd.DataFrame) -> list[str]:
    return sorted(table["path"])


def register_challenger(adapter: dict[str, Any], train: pd.DataFrame, val: pd.DataFrame,
                        summary: dict[str, Any], retrain: dict[str, Any]) -> dict[str, Any]:
    """The trained adapter as a version of ``<dataset>-<method>`` (the same file again:
    its existing version), aliased ``challenger``."""
    registry = _registry(retrain)
    data = {"train_images": _identity(train), "val_images": _identity(val),
            "config": adapter["config"]}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "adapter.safetensors"
        SafetensorsDataset(str(path)).save(adapter)
        version = registry.register(path, {
            "dataset": retrain["dataset"], "method": retrain["method"],
            "shots": summary.get("shots"), "seed": summary.get("seed"),
            "steps": summary.get("steps"), "n_train": len(train), "n_val": len(val),
            # tags are short: the lists and config go beside the file, and are named
            # here by their hash
            "data_sha256": hashlib.sha256(json.dumps(data, sort_keys=True).encode()
                                          ).hexdigest()})
    registry.write_text(version, DATA_FILE, json.dumps(data, indent=1))
    registry.set_alias(CHALLENGER, version.version)
    logger.info("Challenger: %s version %d", registry.name, version.version)
    return {"name": registry.name, "version": version.version, "run_id": version.run_id}


def evaluate_champion(test: pd.DataFrame, retrain: dict[str, Any], dataset: dict[str, Any],
                      model_params: dict[str, Any], runtime: dict[str, Any],
                      embedding_store: str | None = None
                      ) -> tuple[dict[str, Any], pd.DataFrame]:
    """The current champion's metrics and predictions on this run's test split (an
    empty table and ``version: None`` before the first promotion)."""
    registry = _registry(retrain)
    champion = registry.get(CHAMPION)
    if champion is None:
        return {"version": None}, pd.DataFrame({"path": [], "correct": []})
    adapter = SafetensorsDataset(str(registry.download(champion))).load()
    metrics, _, predictions = score_adapter(adapter, test, dataset["root"], model_params,
                                            runtime, embedding_store)
    frozen = registry.read_text(champion, TEST_LIST)
    return {**metrics, "version": champion.version,
            "test_at_promotion": json.loads(frozen) if frozen else None}, predictions


def promote(challenger: dict[str, Any], challenger_metrics: dict[str, Any],
            challenger_predictions: pd.DataFrame, champion_metrics: dict[str, Any],
            champion_predictions: pd.DataFrame, retrain: dict[str, Any]) -> dict[str, Any]:
    """Decide, tag the challenger's version with the decision, and on a pass move the
    ``champion`` alias; returns the decision record. A version is decided once: a later
    run re-applies its recorded decision (so a run killed between the tag and the alias
    completes the move)."""
    settings = RetrainSettings(**retrain)
    registry = _registry(retrain)
    version = registry.require(challenger["version"])
    if "record" in version.tags:
        row = json.loads(version.tags["record"])
        if row["decision"] == PROMOTED:
            registry.set_alias(CHAMPION, version.version)
        logger.info("v%d was decided before: %s (%s)", version.version, row["decision"],
                    row["reason"])
        return row
    champion = registry.get(CHAMPION)
    champion_version = champion.version if champion else None
    if champion_version != champion_metrics["version"]:
        raise RuntimeError(f"The champion of {registry.name!r} changed during this run "
                           f"(v{champion_metrics['version']} was scored, v{champion_version}"
                           " is now). Run again to score the new one.")
    scores = _scores(challenger_predictions, challenger_metrics, champion_predictions,
                     champion_metrics, settings)
    frozen = settings.freeze_test and scores["champion_frozen"] is not None
    used = ("challenger_frozen", "champion_frozen") if frozen else ("challenger", "champion")
    decision, reason = decide(version.version, scores[used[0]], champion_version,
                              scores[used[1]], settings)
    row = record(version.version, champion_version, scores, decision, reason, settings)
    if decision == PROMOTED:
        registry.write_text(version, TEST_LIST, json.dumps(sorted(challenger_predictions["path"])))
    registry.tag(version.version, {"decision": decision, "record": json.dumps(row)})
    if decision == PROMOTED:
        registry.set_alias(CHAMPION, version.version)
    logger.info("Retrain %s: %s. %s", registry.name, decision, reason)
    return row


def _scores(challenger_predictions, challenger_metrics, champion_predictions,
            champion_metrics, settings: RetrainSettings) -> dict[str, Score | None]:
    """Both models on the current test split and, where the champion recorded one, on
    the test images that existed at its promotion."""
    metric = settings.metric
    frozen = champion_metrics.get("test_at_promotion")
    has_champion = champion_metrics["version"] is not None
    paths = set(frozen) if frozen else None
    return {
        "challenger": Score.of(challenger_predictions, metric, challenger_metrics),
        "champion": Score.of(champion_predictions, metric, champion_metrics)
        if has_champion else None,
        "challenger_frozen": Score.of(challenger_predictions, metric, challenger_metrics,
                                      paths) if paths else None,
        "champion_frozen": Score.of(champion_predictions, metric, champion_metrics, paths)
        if paths and has_champion else None,
    }


def model_history(promotion: dict[str, Any], retrain: dict[str, Any]
                  ) -> tuple[pd.DataFrame, list[dict[str, Any]], str]:
    """Every version of the registered model with its decision, scores and aliases:
    a table, the same as JSON, and a markdown section for the report."""
    registry = _registry(retrain)
    rows = []
    for version in registry.versions():
        decided = json.loads(version.tags["record"]) if "record" in version.tags else {}
        rows.append({"version": version.version, "aliases": ",".join(version.aliases),
                     **{k: v for k, v in decided.items() if k != "challenger_version"}})
    table = pd.DataFrame(rows)
    return table, rows, _markdown(registry.name, rows, promotion)


def _percent(row: dict[str, Any], key: str) -> str:
    value, low, high = (row.get(f"{key}_{f}") for f in ("value", "low", "high"))
    if value is None:
        return "-"
    interval = f" [{100 * low:.1f}, {100 * high:.1f}]" if low is not None else ""
    return f"{100 * value:.2f}%{interval}"


def _markdown(name: str, rows: list[dict[str, Any]], promotion: dict[str, Any]) -> str:
    lines = [f"## Model history: {name}", "",
             f"This run: **{promotion['decision']}**: {promotion['reason']}.", "",
             "| version | aliases | decided | decision | challenger (95% CI) | champion "
             "| champion score (95% CI) | test images |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| v{row['version']} | {row['aliases'] or '-'} | {row.get('decided_at', '-')} "
            f"| {row.get('decision', '-')} | {_percent(row, 'challenger')} "
            f"| {'v' + str(row['champion_version']) if row.get('champion_version') else '-'} "
            f"| {_percent(row, 'champion')} | {row.get('challenger_n', '-')} |")
    return "\n".join(lines) + "\n"
