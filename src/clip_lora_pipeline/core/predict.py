"""Classes for new, unlabelled images: find them (a folder, searched recursively, or one
file), set aside the files that cannot be read, and rank the classes of a dataset with
its zero-shot text classifier, a linear classifier on embeddings (the linear probe, the
text-initialised head) or a trained adapter (LoRA, BitFit)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from upath import UPath

from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.adapted import AdaptedClip
from clip_lora_pipeline.core.embed import (
    classifier_logits,
    embeddings_matrix,
    encode_images,
)
from clip_lora_pipeline.core.errors import SettingsError
from clip_lora_pipeline.core.images import check_images, image_files
from clip_lora_pipeline.core.methods.registry import from_artifact
from clip_lora_pipeline.core.metrics import ranked_classes
from clip_lora_pipeline.core.model_id import ModelSpec
from clip_lora_pipeline.core.models import load_model
from clip_lora_pipeline.core.runtime import (
    RuntimeSettings,
    resolve_device,
    resolve_num_workers,
    resolve_precision,
)

logger = logging.getLogger(__name__)

ZERO_SHOT = "zero_shot"
# A model from the registry (retrain's <dataset>-<method>): an alias or a version "v3".
REGISTERED = ("champion", "challenger")
PARAMETER_KEYS = ("input", "dataset", "model", "prompt_set", "top_k")


@dataclass(frozen=True)
class PredictSettings:
    """The ``predict`` parameters, checked against what the project can run."""

    input: str
    dataset: str
    model: str  # zero_shot, a feature method (linear_probe, ...) or an adaptation method
    prompt_set: str | None  # zero_shot only
    top_k: int = 5

    @classmethod
    def from_params(
        cls, params: Any, datasets: Sequence[str], prompt_sets: Sequence[str],
        features: Sequence[str], methods: Sequence[str],
    ) -> PredictSettings:
        """``features``: the methods on cached features the project fits.
        Every mistake is a ValueError naming the parameter, its value and what it may be."""
        if not isinstance(params, dict):
            raise SettingsError(
                f"parameter 'predict' must map {list(PARAMETER_KEYS)} to values; got {params!r}. "
                "See conf/base/parameters_predict.yml."
            )
        unknown = sorted(set(params) - set(PARAMETER_KEYS))
        if unknown:
            raise SettingsError(f"parameters {['predict.' + k for k in unknown]} are unknown; "
                                f"known: {['predict.' + k for k in PARAMETER_KEYS]}.")
        missing = [k for k in ("input", "dataset", "model") if params.get(k) in (None, "")]
        if missing:
            raise SettingsError(
                f"parameters {['predict.' + k for k in missing]} are not set. Note: when "
                "the run environment (e.g. conf/local) has parameter files without a "
                "'predict' entry, `--params predict.<key>=...` replaces the whole entry; "
                "copy conf/base/parameters_predict.yml into that environment, or pass "
                "every key."
            )
        _one_of("predict.dataset", params["dataset"], datasets, "the 'datasets' parameter")
        models = [ZERO_SHOT, *features, *methods, *REGISTERED]
        if not is_registered(params["model"]):
            _one_of("predict.model", params["model"], models,
                    f"zero_shot, an entry of 'feature_methods' ({', '.join(features)}) or "
                    "of 'adaptation_methods', or a registered model: champion, challenger "
                    "or a version such as v3")
        prompt_set = params.get("prompt_set")
        if params["model"] == ZERO_SHOT:
            _one_of("predict.prompt_set", prompt_set, prompt_sets, "an entry of 'prompt_sets'")
        top_k = params.get("top_k", 5)
        _check_top_k(top_k)
        return cls(str(params["input"]), params["dataset"], params["model"], prompt_set, top_k)


def is_registered(model: Any) -> bool:
    """An alias or version of the model registry (``champion``, ``v3``)."""
    return model in REGISTERED or (isinstance(model, str) and model[:1] == "v"
                                   and model[1:].isdigit())


def _one_of(name: str, value: Any, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise SettingsError(f"parameter {name} is {value!r}; allowed values ({what}): "
                            f"{list(allowed)}.")


def _check_top_k(top_k: Any) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise SettingsError(f"parameter predict.top_k must be an integer >= 1, got {top_k!r}.")


# Finding the images --------------------------------------------------------------------
def image_root(input_path: str | os.PathLike) -> Path | UPath:
    """The folder image paths are relative to: the input folder, or the file's folder
    (on any filesystem, ``core.storage``)."""
    path = storage.data_path(input_path)
    if not path.exists():
        raise SettingsError(
            f"predict.input {str(input_path)!r} does not exist (resolved to {path.resolve()}). "
            "Set the parameter predict.input to a folder of images or to one image file."
        )
    return path if path.is_dir() else path.parent


def find_images(
    input_path: str | os.PathLike, num_workers: int | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, Path | UPath]:
    """The readable images under ``input_path`` and the files that are not.

    ``input_path`` is a folder (searched recursively; files and folders whose name
    starts with '.' are skipped) or one file. Every file is decoded once with
    ``check_image``. Returns ``images`` (path relative to ``root``, width, height, mode),
    ``rejected`` (path, reason), both sorted by path, and ``root``.
    """
    root = image_root(input_path)
    path = storage.data_path(input_path)
    files = image_files(root) if path.is_dir() else [path]
    checks = check_images(files, num_workers)
    relative = pd.Series([p.relative_to(root).as_posix() for p in files], dtype="string")
    reasons = pd.Series([c.reason for c in checks], dtype="string")
    good = reasons.isna().to_numpy()
    images = pd.DataFrame({
        "path": relative[good].reset_index(drop=True),
        "width": pd.array([c.width for c, g in zip(checks, good) if g], dtype="int64"),
        "height": pd.array([c.height for c, g in zip(checks, good) if g], dtype="int64"),
        "mode": pd.array([c.mode for c, g in zip(checks, good) if g], dtype="string"),
    })
    rejected = pd.DataFrame({"path": relative[~good].reset_index(drop=True),
                             "reason": reasons[~good].reset_index(drop=True)})
    logger.info("%d file(s) under %s: %d readable image(s), %d rejected",
                len(files), root, len(images), len(rejected))
    if len(rejected):
        logger.warning("%d file(s) under %s cannot be read and get no prediction: %s",
                       len(rejected), root, ", ".join(
                           f"{r.path} ({r.reason})" for r in rejected.head(5).itertuples()
                       ) + (", ..." if len(rejected) > 5 else ""))
    if not len(images):
        logger.warning("no readable image under %s: the predictions table is empty", input_path)
    return images, rejected, root


# Logits per kind of model ----------------------------------------------------------------
def _image_features(
    images: pd.DataFrame, root: str | os.PathLike, model_params: dict[str, Any],
    runtime: dict[str, Any],
) -> np.ndarray:
    """L2-normalised CLIP image embeddings, computed as the zero_shot pipeline does."""
    device = resolve_device(runtime.get("device", "auto"))
    loaded = load_model(ModelSpec.from_params(model_params), device)
    return encode_images(
        loaded.model, images, root, loaded.preprocess, device,
        dtype=resolve_precision(device, runtime.get("precision", "auto")),
        batch_size=runtime.get("batch_size", 64), num_workers=runtime.get("num_workers", "auto"),
        desc="Encoding new images",
    )


def _check_width(features: np.ndarray, weights: np.ndarray, what: str) -> None:
    if features.shape[1] != weights.shape[1]:
        raise ValueError(
            f"the {what} holds {weights.shape[1]}-dimensional embeddings but the model "
            f"gives {features.shape[1]}: it was made with another model; re-run its pipeline."
        )


def logits_from_text_classifier(
    images: pd.DataFrame, root: str | os.PathLike, classifier: pd.DataFrame,
    model_params: dict[str, Any], runtime: dict[str, Any],
) -> tuple[np.ndarray, list[str]]:
    """Zero-shot: logit scale x cosine with the class prompts' embeddings."""
    classes = classifier["class_name"].tolist()
    if not len(images):
        return np.empty((0, len(classes)), dtype=np.float32), classes
    features = _image_features(images, root, model_params, runtime)
    _check_width(features, embeddings_matrix(classifier), "text classifier")
    return classifier_logits(features, classifier), classes


def logits_from_feature_method(
    images: pd.DataFrame, root: str | os.PathLike, artifact: dict[str, Any],
    model_params: dict[str, Any], runtime: dict[str, Any],
) -> tuple[np.ndarray, list[str]]:
    """A method fit on cached features (linear probe, Tip-Adapter, ...), reloaded from
    its stored arrays, on the images' embeddings."""
    method, fitted, classes = from_artifact(artifact)
    if not len(images):
        return np.empty((0, len(classes)), dtype=np.float32), classes
    features = _image_features(images, root, model_params, runtime)
    widths = {a.shape[-1] for a in fitted.arrays.values() if a.ndim == 2}
    if features.shape[1] not in widths:
        raise ValueError(
            f"the {method.name} model holds {sorted(widths)}-dimensional arrays but the model "
            f"gives {features.shape[1]}-dimensional embeddings: it was fit on another "
            "model's features; re-run its pipeline.")
    return method.logits(fitted, features), classes


def logits_from_adapter(
    images: pd.DataFrame, root: str | os.PathLike, adapter: dict[str, Any],
    model_params: dict[str, Any], runtime: dict[str, Any],
) -> tuple[np.ndarray, list[str]]:
    """The trained model (LoRA, BitFit, ...) with its own head, as its evaluation runs it;
    rebuilt for inference only (no optimiser)."""
    classes = list(adapter["config"]["classes"])
    if not len(images):
        return np.empty((0, len(classes)), dtype=np.float32), classes
    adapted = AdaptedClip.from_artifact(adapter, model_params, runtime)
    paths = [storage.join(root, p) for p in images["path"]]
    settings = RuntimeSettings.from_params(runtime)
    logits = adapted.predict(paths, adapted.preprocess, settings.batch_size,
                             resolve_num_workers(settings.num_workers, adapted.device))
    return logits, classes


# The table -----------------------------------------------------------------------------
def top_k_table(
    files: Sequence[str], logits: np.ndarray, class_names: Sequence[str], k: int
) -> pd.DataFrame:
    """One row per file: ``file``, ``predicted_class``, ``confidence``, then ``class_1``,
    ``prob_1`` ... ``class_k``, ``prob_k`` (k at most the number of classes), with
    probabilities the softmax of the logits, ranked as ``core.metrics.evaluate`` ranks."""
    _check_top_k(k)
    files = list(files)
    n_classes = len(class_names)
    if logits.shape != (len(files), n_classes):
        raise ValueError(f"logits have shape {logits.shape}, expected ({len(files)}, {n_classes}).")
    k = min(k, n_classes)
    ranked, probs = ranked_classes(logits)
    ranked = ranked[:, :k]
    names = np.asarray(class_names, dtype=object)
    rows = np.arange(len(files))[:, None]
    top_names, top_probs = names[ranked], probs[rows, ranked]
    table = pd.DataFrame({
        "file": pd.Series(files, dtype="string"),
        "predicted_class": pd.Series(top_names[:, 0], dtype="string"),
        "confidence": top_probs[:, 0],
    })
    for i in range(k):
        table[f"class_{i + 1}"] = pd.Series(top_names[:, i], dtype="string")
        table[f"prob_{i + 1}"] = top_probs[:, i]
    return table
