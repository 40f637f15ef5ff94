"""Thin wrappers over the library: encode once, build text classifiers, evaluate."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clip_lora_pipeline.core.embed import (
    classifier_logits,
    embeddings_matrix,
    embeddings_table,
    encode_images,
)
from clip_lora_pipeline.core.manifest import class_table
from clip_lora_pipeline.core.metrics import evaluate
from clip_lora_pipeline.core.model_id import ModelSpec
from clip_lora_pipeline.core.models import LoadedModel, shared_model
from clip_lora_pipeline.core.prompts import build_text_classifier, templates_for
from clip_lora_pipeline.core.runtime import resolve_device, resolve_precision

logger = logging.getLogger(__name__)


def loaded_model(model_params: dict[str, Any], runtime: dict[str, Any]) -> LoadedModel:
    device = resolve_device(runtime.get("device", "auto"))
    return shared_model(ModelSpec.from_params(model_params), device)


def _encode(manifest: pd.DataFrame, name: str, dataset: dict[str, Any],
            model_params: dict[str, Any], runtime: dict[str, Any]) -> pd.DataFrame:
    loaded = loaded_model(model_params, runtime)
    embeddings = encode_images(
        loaded.model, manifest, Path(dataset["root"]), loaded.preprocess, loaded.device,
        dtype=resolve_precision(loaded.device, runtime.get("precision", "auto")),
        batch_size=runtime.get("batch_size", 64),
        num_workers=runtime.get("num_workers", "auto"), desc=f"Encoding {name}",
    )
    return embeddings_table(manifest, embeddings)


def encode_test(
    test: pd.DataFrame, dataset: dict[str, Any], model_params: dict[str, Any],
    runtime: dict[str, Any],
) -> pd.DataFrame:
    """L2-normalised image embeddings of the test split: once per dataset and model,
    whatever the few-shot cells."""
    return _encode(test, "test", dataset, model_params, runtime)


def encode_few_shot(
    train: pd.DataFrame, val: pd.DataFrame, dataset: dict[str, Any],
    model_params: dict[str, Any], runtime: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """L2-normalised image embeddings of one cell's train and val samples."""
    return (_encode(train, "train", dataset, model_params, runtime),
            _encode(val, "val", dataset, model_params, runtime))


def text_classifier(
    manifest: pd.DataFrame,
    dataset: dict[str, Any],
    prompt_set: str | list[str],
    model_params: dict[str, Any],
    runtime: dict[str, Any],
) -> pd.DataFrame:
    """One normalised text embedding per class (label order), with the logit scale."""
    loaded = loaded_model(model_params, runtime)
    classes = class_table(manifest)
    templates = templates_for(prompt_set, dataset["source"])
    weights = build_text_classifier(
        loaded.model, loaded.tokenizer, classes, templates, loaded.device
    ).numpy()
    return pd.DataFrame({
        "label": np.arange(len(classes)),
        "class_name": classes,
        "embedding": list(weights),
        "logit_scale": float(loaded.model.logit_scale.exp().item()),
        "n_templates": len(templates),
    })


def zero_shot(
    test_embeddings: pd.DataFrame, classifier: pd.DataFrame
) -> tuple[dict[str, float], pd.DataFrame, pd.DataFrame]:
    """Metrics, per-class table and predictions of the text classifier on test."""
    logits = zero_shot_logits(test_embeddings, classifier)
    metrics, per_class, predictions = evaluate(
        logits, test_embeddings["label"].to_numpy(), classifier["class_name"].tolist(),
        test_embeddings["path"].tolist(),
    )
    metrics["n_templates"] = int(classifier["n_templates"].iloc[0])
    logger.info("zero-shot top-1 %.4f over %d test images", metrics["top1"], metrics["n_images"])
    return metrics, per_class, predictions


def zero_shot_logits(test_embeddings: pd.DataFrame, classifier: pd.DataFrame) -> np.ndarray:
    return classifier_logits(embeddings_matrix(test_embeddings), classifier)
