"""Thin wrapper: fit the probe on train/val embeddings, evaluate on test."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch

from clip_lora_pipeline.core.embed import embeddings_matrix
from clip_lora_pipeline.core.linear_probe import fit_linear_probe
from clip_lora_pipeline.core.manifest import class_table
from clip_lora_pipeline.core.metrics import evaluate
from clip_lora_pipeline.core.resources import PeakMemory

logger = logging.getLogger(__name__)


def linear_probe(
    train_embeddings: pd.DataFrame,
    val_embeddings: pd.DataFrame,
    test_embeddings: pd.DataFrame,
    manifest: pd.DataFrame,
    params: dict[str, Any],
    shots: int | None,
) -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """Returns the probe (one row per class), metrics, per-class table, predictions."""
    classes = class_table(manifest)
    memory = PeakMemory(torch.device("cpu")).start()
    grid = np.logspace(params.get("c_min_log10", -3), params.get("c_max_log10", 3),
                       params.get("c_steps", 13))
    probe = fit_linear_probe(
        embeddings_matrix(train_embeddings), train_embeddings["label"].to_numpy(),
        embeddings_matrix(val_embeddings), val_embeddings["label"].to_numpy(),
        n_classes=len(classes), c_grid=tuple(grid), max_iter=params.get("max_iter", 1000),
    )
    logits = probe.logits(embeddings_matrix(test_embeddings))
    metrics, per_class, predictions = evaluate(
        logits, test_embeddings["label"].to_numpy(), classes, test_embeddings["path"].tolist()
    )
    metrics.update({
        "method": "linear_probe", "shots": shots, "C": probe.C,
        "fit_seconds": probe.fit_seconds, "peak_memory_mb": memory.peak_mb(),
        "peak_memory_kind": memory.kind,
        "trainable_parameters": int(probe.weights.size + probe.bias.size),
        "val_accuracy_by_C": dict(zip(map(str, probe.search["C"]), probe.search["val_accuracy"])),
    })
    logger.info("linear probe: C=%g, test top-1 %.4f, fit %.2f s", probe.C, metrics["top1"],
                probe.fit_seconds)
    return probe.to_table(classes), metrics, per_class, predictions
