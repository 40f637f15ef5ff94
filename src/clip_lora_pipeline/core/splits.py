"""Train / val / test splits and few-shot sampling, reproducible from a seed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from clip_lora_pipeline.core.manifest import SPLITS


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


def sample_few_shot(frame: pd.DataFrame, shots: int | None, seed: int, split: str) -> pd.DataFrame:
    """Take ``shots`` images of every class (all of them when ``shots`` is None)."""
    if shots is None:
        return frame.sort_values("path", ignore_index=True)
    if shots < 1:
        raise SplitError(f"shots must be a positive integer or null, got {shots}.")
    picked = []
    for label, group in frame.groupby("label", sort=True):
        if len(group) < shots:
            raise SplitError(
                f"class '{group['class_name'].iloc[0]}' has {len(group)} {split} image(s), "
                f"fewer than the {shots} asked for. Lower few_shot.shots (or val_shots), "
                "or add images to that class."
            )
        picked.append(_shuffled(group, seed, int(label)).iloc[:shots])
    return pd.concat(picked).sort_values("path", ignore_index=True)


def check_classes_present(frame: pd.DataFrame, class_names: list[str], split: str) -> None:
    """Fail when a class has no image at all in ``split``."""
    missing = sorted(set(class_names) - set(frame["class_name"]))
    if missing:
        raise SplitError(
            f"classes {missing[:10]} have no {split} image. Add images to them or remove them."
        )
