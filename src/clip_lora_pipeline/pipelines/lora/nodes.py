"""Thin wrappers over ``core.adapted`` and ``core.train``: train an adapted model,
evaluate it, export it merged."""

from __future__ import annotations

from typing import Any

import pandas as pd

from clip_lora_pipeline.core.adapted import AdaptedClip
from clip_lora_pipeline.core.adapted_eval import score_adapter
from clip_lora_pipeline.core.attention import open_clip_state_dict
from clip_lora_pipeline.core.model_id import uses_quick_gelu
from clip_lora_pipeline.core.train_cell import CellJob, train_cell


def train_adapter(
    train: pd.DataFrame, val: pd.DataFrame, classes: list[str], dataset: dict[str, Any],
    model_params: dict[str, Any], runtime: dict[str, Any], shots: int | None,
    method: dict[str, Any], checkpoint_root: str, name: str, seed: int,
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Train the entry ``adaptation_methods.<name>`` (``method``); returns the adapter
    (trainable tensors + config), history and a summary. ``seed``: the few-shot seed,
    which also drives training unless the entry sets one.

    Checkpoints go under ``checkpoint_root`` in a folder named by everything the result
    depends on, so an interrupted run resumes and a changed one starts afresh. With
    ``runtime.devices`` above 1 the node starts that many training processes itself
    (``core.train_cell``) and returns rank 0's result.
    """
    result = train_cell(CellJob(
        model_params, runtime, name, method, dataset["root"], train[["path", "label"]],
        val[["path", "label"]], classes, shots, seed, checkpoint_root))
    return result.adapter, result.history, result.summary


def evaluate_adapter(
    test: pd.DataFrame, adapter: dict[str, Any], summary: dict[str, Any],
    dataset: dict[str, Any], model_params: dict[str, Any], runtime: dict[str, Any],
    embedding_store: str | None = None,
) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """The trained model's metrics and tables on the full test split; its logits are
    kept per image in ``embedding_store`` under the adapter's identity."""
    metrics, per_class, predictions = score_adapter(
        adapter, test, dataset["root"], model_params, runtime, embedding_store)
    metrics.update({k: summary[k] for k in (
        "method", "shots", "trainable_parameters", "training_seconds", "peak_memory_mb")})
    return metrics, per_class, predictions


def export_merged(
    adapter: dict[str, Any], model_params: dict[str, Any], runtime: dict[str, Any]
) -> dict[str, Any]:
    """Plain open_clip weights with the adapter merged in; load them with
    ``open_clip.create_model(name, pretrained=<this file>, force_quick_gelu=<config's
    quick_gelu>)``. A method whose parts cannot be merged (``mergeable`` False: learned
    prompts) exports its adapter's tensors as trained, with ``merged: false``;
    ``predict`` loads those like any adapter."""
    adapted = AdaptedClip.from_artifact(adapter, model_params, runtime)
    mergeable = adapted.settings.method.mergeable
    config = {"model": model_params["name"], "adapter": adapter["config"]["method"],
              "quick_gelu": uses_quick_gelu(adapted.spec), "merged": mergeable}
    tensors = open_clip_state_dict(adapted.merged()) if mergeable else adapter["tensors"]
    return {"tensors": tensors, "config": config}
