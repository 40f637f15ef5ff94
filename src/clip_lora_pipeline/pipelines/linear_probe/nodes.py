"""Thin wrappers: fit a linear classifier on train/val embeddings, evaluate on test."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch

from clip_lora_pipeline.core.embed import embeddings_matrix
from clip_lora_pipeline.core.linear_probe import (
    LinearProbe,
    fit_linear_probe,
    fit_text_initialised_head,
)
from clip_lora_pipeline.core.manifest import class_table
from clip_lora_pipeline.core.metrics import evaluate
from clip_lora_pipeline.core.resources import PeakMemory

logger = logging.getLogger(__name__)

Outputs = tuple[pd.DataFrame, dict[str, Any], pd.DataFrame, pd.DataFrame]


def linear_probe(
    train_embeddings: pd.DataFrame,
    val_embeddings: pd.DataFrame,
    test_embeddings: pd.DataFrame,
    manifest: pd.DataFrame,
    params: dict[str, Any],
    shots: int | None,
) -> Outputs:
    """Logistic regression. Returns the probe (one row per class), metrics, per-class
    table, predictions."""
    classes = class_table(manifest)
    memory = PeakMemory(torch.device("cpu")).start()
    grid = np.logspace(params.get("c_min_log10", -3), params.get("c_max_log10", 3),
                       params.get("c_steps", 13))
    probe = fit_linear_probe(
        *_features_and_labels(train_embeddings, val_embeddings), n_classes=len(classes),
        c_grid=tuple(grid), max_iter=params.get("max_iter", 1000),
    )
    return _evaluated(probe, "linear_probe", test_embeddings, classes, shots, memory)


def text_initialised_head(
    train_embeddings: pd.DataFrame,
    val_embeddings: pd.DataFrame,
    test_embeddings: pd.DataFrame,
    classifier: pd.DataFrame,
    params: dict[str, Any],
    shots: int | None,
) -> Outputs:
    """The head that starts as the text classifier of ``params['prompt_set']``. Returns
    the head (one row per class), metrics, per-class table, predictions."""
    classes = classifier.sort_values("label")["class_name"].tolist()
    memory = PeakMemory(torch.device("cpu")).start()
    grid = np.logspace(params.get("strength_min_log10", -5), params.get("strength_max_log10", 2),
                       params.get("strength_steps", 8))
    probe = fit_text_initialised_head(
        *_features_and_labels(train_embeddings, val_embeddings),
        embeddings_matrix(classifier.sort_values("label")),
        float(classifier["logit_scale"].iloc[0]),
        strength_grid=tuple(grid), max_iter=params.get("max_iter", 100),
    )
    outputs = _evaluated(probe, "text_init_head", test_embeddings, classes, shots, memory)
    outputs[1]["prompt_set"] = params.get("prompt_set")
    return outputs


def _features_and_labels(*tables: pd.DataFrame) -> list[np.ndarray]:
    """Per table: its embeddings matrix, then its labels."""
    return [array for table in tables
            for array in (embeddings_matrix(table), table["label"].to_numpy())]


def _evaluated(probe: LinearProbe, method: str, test_embeddings: pd.DataFrame,
               classes: list[str], shots: int | None, memory: PeakMemory) -> Outputs:
    logits = probe.logits(embeddings_matrix(test_embeddings))
    metrics, per_class, predictions = evaluate(
        logits, test_embeddings["label"].to_numpy(), classes, test_embeddings["path"].tolist()
    )
    name = probe.hyperparameter
    metrics.update({
        "method": method, "shots": shots, name: probe.value,
        "fit_seconds": probe.fit_seconds, "peak_memory_mb": memory.peak_mb(),
        "peak_memory_kind": memory.kind,
        "trainable_parameters": int(probe.weights.size + probe.bias.size),
        f"val_accuracy_by_{name}": dict(zip(map(str, probe.search[name]),
                                            probe.search["val_accuracy"])),
    })
    logger.info("%s: %s=%g, test top-1 %.4f, fit %.2f s", method, name, probe.value,
                metrics["top1"], probe.fit_seconds)
    return probe.to_table(classes), metrics, per_class, predictions
