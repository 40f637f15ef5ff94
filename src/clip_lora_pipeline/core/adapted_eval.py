"""An adapted model's test logits and metrics, with the logits kept per image in the
embedding store under the adapter's own identity: the same adapter scored again on a
grown test set (a retrain's champion, an unchanged challenger) decodes and runs only the
images it has not seen."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.adapted import AdaptedClip
from clip_lora_pipeline.core.metrics import evaluate
from clip_lora_pipeline.core.model_id import model_slug
from clip_lora_pipeline.core.runtime import RuntimeSettings, resolve_num_workers
from clip_lora_pipeline.core.store import (
    EmbeddingStore,
    cached_embeddings,
    encoding_description,
    encoding_namespace,
    file_hashes,
)


def adapter_digest(adapter: dict[str, Any]) -> str:
    """12 hex digits of the sha256 of the adapter's tensors and config."""
    digest = hashlib.sha256(json.dumps(adapter["config"], sort_keys=True).encode())
    for name in sorted(adapter["tensors"]):
        tensor = adapter["tensors"][name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]


def adapter_logits(adapter: dict[str, Any], test: pd.DataFrame, root: str | Path,
                   model_params: dict[str, Any], runtime: dict[str, Any],
                   store_root: str | None = None) -> np.ndarray:
    """Head logits of the test images, in order; with ``store_root``, read back for the
    images this adapter (same tensors, same preprocessing and precision) has scored."""
    adapted = AdaptedClip.from_artifact(adapter, model_params, runtime)
    settings = RuntimeSettings.from_params(runtime)
    paths = [storage.join(root, p) for p in test["path"]]
    workers = resolve_num_workers(settings.num_workers, adapted.device)

    def predict(rows: np.ndarray) -> np.ndarray:
        return adapted.predict([paths[i] for i in rows], adapted.preprocess,
                               settings.batch_size, workers)

    if not store_root or test.empty:
        return predict(np.arange(len(paths)))
    args = (adapted.preprocess, adapted.dtype, adapted.device.type)
    slug = f"{model_slug(adapted.spec)}+adapter_{adapter_digest(adapter)}"
    store = EmbeddingStore(store_root, encoding_namespace(slug, *args),
                           encoding_description(*args))
    return cached_embeddings(store, file_hashes(paths), predict, desc="Scoring test")


def score_adapter(adapter: dict[str, Any], test: pd.DataFrame, root: str | Path,
                  model_params: dict[str, Any], runtime: dict[str, Any],
                  store_root: str | None = None
                  ) -> tuple[dict[str, float], pd.DataFrame, pd.DataFrame]:
    """Metrics, per-class table and predictions of the adapter on ``test``."""
    logits = adapter_logits(adapter, test, root, model_params, runtime, store_root)
    return evaluate(logits, test["label"].to_numpy(), adapter["config"]["classes"],
                    test["path"].tolist())
