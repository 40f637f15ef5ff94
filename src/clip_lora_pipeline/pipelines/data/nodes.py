"""Thin wrappers over ``clip_lora_pipeline.core`` for the data pipeline."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from clip_lora_pipeline.core.dataset_settings import DatasetSettings
from clip_lora_pipeline.core.download import fetch
from clip_lora_pipeline.core.images import validate_images
from clip_lora_pipeline.core.manifest import class_table
from clip_lora_pipeline.core.sources import get_source
from clip_lora_pipeline.core.splits import (
    check_classes_present,
    sample_few_shot,
    split_dataset,
)

logger = logging.getLogger(__name__)

# A node sees its dataset's entry, not its key under dataset_configs; the pipeline registry
# has already checked every entry under its real name, so this only labels a fallback.
_UNNAMED = "<dataset>"


def _settings(dataset: dict[str, Any]) -> DatasetSettings:
    return DatasetSettings.from_params(_UNNAMED, dataset)


def download(dataset: dict[str, Any], download_options: dict[str, Any]) -> pd.DataFrame:
    """Fetch whatever of the dataset is missing under its root, then index it: from its
    split file (CoOp's, fetched alongside the images, or ``split_file``) or from the
    source's own lists."""
    settings = _settings(dataset)
    source, root, options = get_source(settings.source), settings.root, settings.options
    timeout = download_options.get("timeout", 30.0)
    if source.is_prepared(root, **options):
        logger.info("%s: files already in %s", source.name, root)
    else:
        logger.info("%s: fetching missing files into %s", source.name, root)
        source.prepare(root, timeout=timeout, **options)
    split_file = settings.split_file_path()
    if split_file is None:
        manifest = source.index(root, **options)
    else:
        if settings.split_file is None:  # CoOp's own split file
            fetch([source.coop_split], root, timeout=timeout)
        manifest = source.index_split_file(root, split_file)
    logger.info(
        "%s: %d images in %d classes (%s)", source.name, len(manifest),
        manifest["label"].nunique(), split_file or f"protocol {settings.protocol}",
    )
    return manifest


def classes(manifest: pd.DataFrame) -> list[str]:
    """The class names in label order: what the text classifiers and training take of the
    dataset, so adding images to existing classes leaves them to their records."""
    return class_table(manifest)


def validate(
    manifest: pd.DataFrame, dataset: dict[str, Any], validation: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode every image once; return the usable images and the rejected ones.
    ``validation.cache``: the folder of the content-addressed validation cache
    (``core.validation_store``) that files already checked are read back from; None: none."""
    root = _settings(dataset).root
    images, rejected = validate_images(
        manifest,
        root,
        on_bad_image=validation.get("on_bad_image", "skip"),
        num_workers=validation.get("num_workers"),
        cache=validation.get("cache"),
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
    dataset: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``shots`` images per class for training and ``val_shots`` (default min(shots, 4))
    for validation; None means all. ``dataset``: its settings say whether a class with
    fewer images than ``shots`` may be filled up with repeats."""
    classes = sorted(set(train_pool["class_name"]) | set(val_pool["class_name"])
                     | set(test["class_name"]))
    check_classes_present(train_pool, classes, "train")
    check_classes_present(val_pool, classes, "val")
    if val_shots is None and shots is not None:
        val_shots = min(shots, 4)
    repeats = dataset is not None and _settings(dataset).allow_repeats
    train = sample_few_shot(train_pool, shots, seed, "train", allow_repeats=repeats)
    val = sample_few_shot(val_pool, val_shots, seed, "val", allow_repeats=repeats)
    return train, val
