"""Thin wrappers over ``clip_lora_pipeline.core`` for the data pipeline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from clip_lora_pipeline.core.images import validate_images
from clip_lora_pipeline.core.sources import SourceError, get_source
from clip_lora_pipeline.core.splits import (
    check_classes_present,
    sample_few_shot,
    split_dataset,
)

logger = logging.getLogger(__name__)

_DATASET_KEYS = {"source", "root", "options"}


def _source_and_root(dataset: dict[str, Any]):
    unknown = sorted(set(dataset) - _DATASET_KEYS)
    if unknown or "source" not in dataset or "root" not in dataset:
        raise SourceError(
            f"A dataset entry needs 'source' and 'root' (and optionally 'options'); got keys "
            f"{sorted(dataset)}. Example:\n  dataset_configs:\n    flowers102:\n      source: "
            "flowers102\n      root: data/01_raw/flowers102"
        )
    return get_source(dataset["source"]), Path(dataset["root"]), dict(dataset.get("options") or {})


def download(dataset: dict[str, Any], download_options: dict[str, Any]) -> pd.DataFrame:
    """Fetch whatever of the dataset is missing under its root, then index it."""
    source, root, options = _source_and_root(dataset)
    source.check_options(dataset["source"], options)
    if source.is_prepared(root, **options):
        logger.info("%s: files already in %s", source.name, root)
    else:
        logger.info("%s: fetching missing files into %s", source.name, root)
        source.prepare(root, timeout=download_options.get("timeout", 30.0), **options)
    manifest = source.index(root, **options)
    logger.info(
        "%s: %d images in %d classes", source.name, len(manifest), manifest["label"].nunique()
    )
    return manifest


def validate(
    manifest: pd.DataFrame, dataset: dict[str, Any], validation: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode every image once; return the usable images and the rejected ones."""
    _, root, _ = _source_and_root(dataset)
    images, rejected = validate_images(
        manifest,
        root,
        on_bad_image=validation.get("on_bad_image", "skip"),
        num_workers=validation.get("num_workers"),
    )
    if len(rejected):
        counts = rejected["reason"].str.split(":").str[0].value_counts()
        logger.warning(
            "%d of %d images under %s were rejected and excluded (%s); the rejected-images "
            "table lists each file and its reason.",
            len(rejected), len(manifest), root,
            ", ".join(f"{n} {reason}" for reason, n in counts.items()),
        )
    return images, rejected


def split(
    images: pd.DataFrame, split_params: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Official split where the source has one, else stratified by fractions and seed."""
    parts = split_dataset(
        images,
        fractions=split_params["fractions"],
        val_fraction_of_train=split_params["val_fraction_of_train"],
        seed=split_params["seed"],
    )
    return parts["train"], parts["val"], parts["test"]


def few_shot(
    train_pool: pd.DataFrame,
    val_pool: pd.DataFrame,
    test: pd.DataFrame,
    shots: int | None,
    val_shots: int | None,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``shots`` images per class for training and ``val_shots`` (default min(shots, 4))
    for validation; None means all."""
    classes = sorted(set(train_pool["class_name"]) | set(val_pool["class_name"])
                     | set(test["class_name"]))
    check_classes_present(train_pool, classes, "train")
    check_classes_present(val_pool, classes, "val")
    if val_shots is None and shots is not None:
        val_shots = min(shots, 4)
    train = sample_few_shot(train_pool, shots, seed, "train")
    val = sample_few_shot(val_pool, val_shots, seed, "val")
    return train, val
