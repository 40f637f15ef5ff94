"""Train / val / test splits and few-shot sampling, reproducible from a seed."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from clip_lora_pipeline.core.manifest import SPLITS

logger = logging.getLogger(__name__)


class SplitError(ValueError):
    """The data cannot be split as configured."""


def _shuffled(frame: pd.DataFrame, seed: int, label: int) -> pd.DataFrame:
    # One generator per (seed, class): a class's draw never depends on other classes,
    # and sorting by path first makes it independent of the input row order.
    rng = np.random.default_rng([seed, label])
    ordered = frame.sort_values("path", ignore_index=True)
    return ordered.iloc[rng.permutation(len(ordered))]


def stratified_split(
    frame: pd.DataFrame, fractions: dict[str, float], seed: int
) -> dict[str, pd.DataFrame]:
    """Split every class by ``fractions`` (split name -> share, summing to 1)."""
    total = sum(fractions.values())
    if not np.isclose(total, 1.0) or any(v < 0 for v in fractions.values()):
        raise SplitError(f"split fractions must be >= 0 and sum to 1, got {fractions}.")
    names = list(fractions)
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in names}
    for label, group in frame.groupby("label", sort=True):
        wanted = [name for name in names if fractions[name] > 0]
        if len(group) < len(wanted):
            raise SplitError(
                f"class '{group['class_name'].iloc[0]}' has {len(group)} image(s); a "
                f"stratified {'/'.join(wanted)} split needs at least {len(wanted)}. Add images "
                "to that class or remove it."
            )
        shuffled = _shuffled(group, seed, int(label))
        counts = {name: int(round(fractions[name] * len(group))) for name in names[1:]}
        for name in names[1:]:
            if fractions[name] > 0:
                counts[name] = max(1, counts[name])
        counts[names[0]] = len(group) - sum(counts.values())
        if counts[names[0]] < 1:
            raise SplitError(
                f"class '{group['class_name'].iloc[0]}' has {len(group)} images, too few to "
                f"keep any in '{names[0]}' with fractions {fractions}."
            )
        start = 0
        for name in names:
            parts[name].append(shuffled.iloc[start:start + counts[name]])
            start += counts[name]
    return {
        name: (pd.concat(chunks) if chunks else frame.iloc[:0])
        .sort_values("path", ignore_index=True)
        for name, chunks in parts.items()
    }


def split_dataset(
    images: pd.DataFrame,
    fractions: dict[str, float],
    val_fraction_of_train: float,
    seed: int,
) -> dict[str, pd.DataFrame]:
    """Assign every image to train, val or test.

    The source's own split is kept where it defines one. A source with only train and
    test gets a stratified val carved out of train (``val_fraction_of_train``). A source
    without splits is split stratified by ``fractions`` (keys train, val, test).
    """
    defined = images["source_split"].notna()
    if not defined.any():
        if set(fractions) != set(SPLITS):
            raise SplitError(f"split.fractions needs keys {list(SPLITS)}, got {sorted(fractions)}.")
        result = stratified_split(images, {k: fractions[k] for k in SPLITS}, seed)
    else:
        if not defined.all():
            raise SplitError(
                f"{int((~defined).sum())} images have no source split while others do, "
                f"e.g. {images.loc[~defined, 'path'].head(3).tolist()}. Put every class "
                "folder under train/, val/ or test/, or none of them."
            )
        result = {name: images[images["source_split"] == name] for name in SPLITS}
        for required in ("train", "test"):
            if result[required].empty:
                raise SplitError(
                    f"the source's own split has no '{required}' images; it needs train and "
                    "test (val is optional and carved from train when missing)."
                )
        if result["val"].empty:
            carved = stratified_split(
                result["train"],
                {"train": 1.0 - val_fraction_of_train, "val": val_fraction_of_train},
                seed,
            )
            result.update(carved)
    return {
        name: frame.drop(columns=["source_split"]).assign(split=name)
        .sort_values("path", ignore_index=True)
        for name, frame in result.items()
    }


def _filled_up(group: pd.DataFrame, shots: int, seed: int, label: int) -> pd.DataFrame:
    """Every image of a short class once, plus ``shots - len(group)`` drawn with
    replacement. CoOp and CLIP-LoRA draw all ``shots`` with replacement
    (random.choices), which can leave some of the few images out; here each is used."""
    ordered = group.sort_values("path", ignore_index=True)  # independent of row order
    rng = np.random.default_rng([seed, label])
    extra = rng.integers(0, len(ordered), shots - len(ordered))
    return pd.concat([ordered, ordered.iloc[extra]])


def sample_few_shot(frame: pd.DataFrame, shots: int | None, seed: int, split: str,
                    allow_repeats: bool = False) -> pd.DataFrame:
    """Take ``shots`` images of every class (all of them when ``shots`` is None).

    A class with fewer images is an error, or with ``allow_repeats`` is filled up to
    ``shots`` by repeating its images (drawn with replacement), as CLIP-LoRA does
    (Dassl's generate_fewshot_dataset with repeat=True); the repeated rows stay in the
    table, one row per draw, and get their own augmentations in training.
    """
    if shots is None:
        return frame.sort_values("path", ignore_index=True)
    if shots < 1:
        raise SplitError(f"shots must be a positive integer or null, got {shots}.")
    picked, short = [], {}
    for label, group in frame.groupby("label", sort=True):
        name = group["class_name"].iloc[0]
        if len(group) >= shots:
            picked.append(_shuffled(group, seed, int(label)).iloc[:shots])
        elif allow_repeats:
            picked.append(_filled_up(group, shots, seed, int(label)))
            short[name] = len(group)
        else:
            raise SplitError(
                f"class '{name}' has {len(group)} {split} image(s), fewer than the {shots} "
                "asked for. Lower few_shot.shots (or val_shots), add images to that class, "
                "or set allow_repeats: true to repeat its images up to the shots."
            )
    if short:
        logger.warning("%d %s class(es) have fewer than %d images and repeat some to reach "
                       "it (class: images): %s", len(short), split, shots, short)
    # A stable sort keeps a file's repeats next to each other in the same order.
    return pd.concat(picked).sort_values("path", ignore_index=True, kind="stable")


def check_classes_present(frame: pd.DataFrame, class_names: list[str], split: str) -> None:
    """Fail when a class has no image at all in ``split``."""
    missing = sorted(set(class_names) - set(frame["class_name"]))
    if missing:
        raise SplitError(
            f"classes {missing[:10]} have no {split} image. Add images to them or remove them."
        )
