"""Thin wrappers over ``core.predict``: find the new images, then rank their classes."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from clip_lora_pipeline.core.predict import (
    find_images,
    image_root,
    logits_from_adapter,
    logits_from_feature_method,
    logits_from_text_classifier,
    top_k_table,
)
from clip_lora_pipeline.core.registry import Registry, registered_name
from clip_lora_pipeline.datasets import SafetensorsDataset

logger = logging.getLogger(__name__)


def find_new_images(params: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The readable images under ``predict.input`` and the rejected files with their
    reason (twice: parquet and a CSV copy)."""
    images, rejected, _ = find_images(params["input"])
    return images, rejected, rejected


def _table(images, logits_and_classes, params) -> tuple[pd.DataFrame, pd.DataFrame]:
    logits, classes = logits_and_classes
    table = top_k_table(images["path"].tolist(), logits, classes, params.get("top_k", 5))
    return table, table


def predict_zero_shot(
    images: pd.DataFrame, classifier: pd.DataFrame, model_params: dict[str, Any],
    runtime: dict[str, Any], params: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Top-k classes of each image by the dataset's zero-shot text classifier."""
    root = image_root(params["input"])
    return _table(images, logits_from_text_classifier(images, root, classifier, model_params,
                                                      runtime), params)


def predict_feature_method(
    images: pd.DataFrame, artifact: dict[str, Any], model_params: dict[str, Any],
    runtime: dict[str, Any], params: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Top-k classes of each image by a method on cached features (linear_probe,
    tip_adapter, ...)."""
    root = image_root(params["input"])
    return _table(images, logits_from_feature_method(images, root, artifact, model_params,
                                                     runtime), params)


def predict_adapted(
    images: pd.DataFrame, adapter: dict[str, Any], model_params: dict[str, Any],
    runtime: dict[str, Any], params: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Top-k classes of each image by a trained adapter (LoRA, BitFit, ...)."""
    root = image_root(params["input"])
    return _table(images, logits_from_adapter(images, root, adapter, model_params, runtime),
                  params)


def predict_registered(
    images: pd.DataFrame, model_params: dict[str, Any], runtime: dict[str, Any],
    params: dict[str, Any], retrain: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Top-k classes by the registered adapter ``predict.model`` names (an alias such as
    ``champion``, or ``v3``) of ``<predict.dataset>-<retrain.method>``."""
    registry = Registry(registered_name(params["dataset"], retrain["method"]))
    reference = params["model"].lstrip("v") if params["model"][1:].isdigit() else params["model"]
    version = registry.require(reference)
    logger.info("Predicting with %s version %d (%s)", registry.name, version.version,
                ", ".join(version.aliases) or "no alias")
    adapter = SafetensorsDataset(str(registry.download(version))).load()
    return predict_adapted(images, adapter, model_params, runtime, params)
