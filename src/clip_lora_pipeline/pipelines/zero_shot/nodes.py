"""Thin wrappers over the library: encode once, build text classifiers, evaluate."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.embed import (
    classifier_logits,
    embeddings_matrix,
    embeddings_table,
    encode_images,
)
from clip_lora_pipeline.core.metrics import evaluate
from clip_lora_pipeline.core.model_id import model_slug
from clip_lora_pipeline.core.models import shared_model_for
from clip_lora_pipeline.core.prompts import build_text_classifier, templates_for
from clip_lora_pipeline.core.runtime import (
    resolve_num_workers,
    resolve_precision,
)
from clip_lora_pipeline.core.store import (
    SHARD_ROWS,
    EmbeddingStore,
    cached_embeddings,
    encoding_description,
    encoding_namespace,
    file_hashes,
)

logger = logging.getLogger(__name__)


def _encode(manifest: pd.DataFrame, name: str, dataset: dict[str, Any],
            model_params: dict[str, Any], runtime: dict[str, Any],
            store_root: str | None = None) -> pd.DataFrame:
    """The split's embedding table. With a store (``embedding_store``), only images
    whose content it lacks are encoded, and they are added to it shard by shard."""
    loaded = shared_model_for(model_params, runtime)
    root = storage.data_path(dataset["root"])
    dtype = resolve_precision(loaded.device, runtime.get("precision", "auto"))
    batch_size = runtime.get("batch_size", 64)
    num_workers = runtime.get("num_workers", "auto")

    def encode(rows: pd.DataFrame) -> np.ndarray:
        return encode_images(loaded.model, rows, root, loaded.preprocess, loaded.device,
                             dtype=dtype, batch_size=batch_size, num_workers=num_workers,
                             desc=f"Encoding {name}")

    if not store_root or manifest.empty:  # empty: encode_images says why it cannot
        return embeddings_table(manifest, encode(manifest))
    args = (loaded.preprocess, dtype, loaded.device.type)
    store = EmbeddingStore(store_root, encoding_namespace(model_slug(loaded.spec), *args),
                           encoding_description(*args))
    # Chunks of a shard, larger with loader workers (GPU): their start-up then costs little.
    chunk = max(SHARD_ROWS, 8 * batch_size * resolve_num_workers(num_workers, loaded.device))
    embeddings = cached_embeddings(
        store, file_hashes([root / p for p in manifest["path"]]),
        lambda rows: encode(manifest.iloc[rows]), chunk, desc=f"Encoding {name}")
    return embeddings_table(manifest, embeddings)


def encode_test(
    test: pd.DataFrame, dataset: dict[str, Any], model_params: dict[str, Any],
    runtime: dict[str, Any], embedding_store: str | None = None,
) -> pd.DataFrame:
    """L2-normalised image embeddings of the test split: once per dataset and model,
    whatever the few-shot cells. ``embedding_store``: the folder of the content-addressed
    store (``core.store``) that images already encoded are read back from; None: none."""
    return _encode(test, "test", dataset, model_params, runtime, embedding_store)


def encode_few_shot(
    train: pd.DataFrame, val: pd.DataFrame, dataset: dict[str, Any],
    model_params: dict[str, Any], runtime: dict[str, Any], embedding_store: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """L2-normalised image embeddings of one cell's train and val samples (the store as
    for ``encode_test``)."""
    return (_encode(train, "train", dataset, model_params, runtime, embedding_store),
            _encode(val, "val", dataset, model_params, runtime, embedding_store))


def text_classifier(
    classes: list[str],
    dataset: dict[str, Any],
    prompt_set: str | list[str],
    model_params: dict[str, Any],
    runtime: dict[str, Any],
) -> pd.DataFrame:
    """One normalised text embedding per class (label order), with the logit scale."""
    loaded = shared_model_for(model_params, runtime)
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
