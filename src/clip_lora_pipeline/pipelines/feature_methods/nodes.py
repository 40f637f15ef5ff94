"""Thin wrappers over ``core.methods``: fit any method on cached features, evaluate it on
test; and encode the augmented views some methods train on."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pandas as pd
import torch

from clip_lora_pipeline.core import storage, views
from clip_lora_pipeline.core.embed import embeddings_matrix
from clip_lora_pipeline.core.methods.base import FeatureSet
from clip_lora_pipeline.core.methods.registry import get_feature_method, to_artifact
from clip_lora_pipeline.core.metrics import evaluate
from clip_lora_pipeline.core.models import shared_model_for
from clip_lora_pipeline.core.runtime import PeakMemory, resolve_precision

logger = logging.getLogger(__name__)

Outputs = tuple[dict[str, Any], dict[str, Any], pd.DataFrame, pd.DataFrame]


def _features(train: pd.DataFrame, val: pd.DataFrame, n_classes: int,
              classifier: pd.DataFrame | None, views: np.ndarray | None) -> FeatureSet:
    if classifier is None:  # the method uses no text: only the class count matters
        text, scale = np.zeros((n_classes, 0), dtype=np.float32), 1.0
    else:
        text = embeddings_matrix(classifier.sort_values("label"))
        scale = float(classifier["logit_scale"].iloc[0])
    return FeatureSet(embeddings_matrix(train), train["label"].to_numpy(),
                      embeddings_matrix(val), val["label"].to_numpy(), text, scale, views)


def fit_feature_method(
    train_embeddings: pd.DataFrame, val_embeddings: pd.DataFrame,
    test_embeddings: pd.DataFrame, classes: list[str], params: dict[str, Any], *,
    name: str, shots: int | None, seed: int, classifier: pd.DataFrame | None = None,
    train_views: pd.DataFrame | None = None,
) -> Outputs:
    """Fit the ``feature_methods.<name>`` entry on train (selecting on val), evaluate on
    test. Returns the model artifact, metrics, per-class table and predictions.
    ``seed``: the cell's, which seeds a method that trains unless its entry sets one (one
    seed drives the sample and the training, as for the backbone methods)."""
    method = get_feature_method(params["method"])
    settings = method.settings(params)
    if "seed" not in params and any(f.name == "seed" for f in dataclasses.fields(settings)):
        settings = dataclasses.replace(settings, seed=seed)
    view_array = None if train_views is None else views.views_array(train_views)
    data = _features(train_embeddings, val_embeddings, len(classes), classifier, view_array)
    memory = PeakMemory(torch.device("cpu")).start()
    fitted = method.fit_timed(data, settings)
    logits = method.logits(fitted, embeddings_matrix(test_embeddings))
    metrics, per_class, predictions = evaluate(
        logits, test_embeddings["label"].to_numpy(), classes, test_embeddings["path"].tolist())
    metrics.update({
        "method": name, "kind": method.name, "shots": shots, "selected": fitted.selected,
        "seed": getattr(settings, "seed", None),
        "fit_seconds": fitted.fit_seconds, "peak_memory_mb": memory.peak_mb(),
        "peak_memory_kind": memory.kind, "trainable_parameters": fitted.trainable_parameters,
        "val_search": (None if fitted.search is None
                       else fitted.search.to_dict(orient="list")),
    })
    logger.info("%s: selected %s, test top-1 %.4f, fit %.2f s", name, fitted.selected or "-",
                metrics["top1"], fitted.fit_seconds)
    return to_artifact(fitted, name, classes), metrics, per_class, predictions


def encode_views(
    train: pd.DataFrame, dataset: dict[str, Any], model_params: dict[str, Any],
    runtime: dict[str, Any], settings_params: dict[str, Any] | None, *, seed: int,
) -> pd.DataFrame:
    """Augmented views of every training image of the cell (one row per image and
    view), encoded once per model and cell for every method that trains on them."""
    settings = views.ViewSettings.from_params(settings_params or {})
    loaded = shared_model_for(model_params, runtime)
    array = views.encode_views(
        loaded.model, train, storage.data_path(dataset["root"]), loaded.model.visual.preprocess_cfg,
        loaded.device, n_views=settings.n_views, crop_scale=settings.crop_scale, seed=seed,
        dtype=resolve_precision(loaded.device, runtime.get("precision", "auto")),
        batch_size=runtime.get("batch_size", 64))
    return views.views_table(train, array)
