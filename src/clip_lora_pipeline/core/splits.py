"""Train / val / test splits and few-shot sampling, reproducible from a seed.

Splits are made image by image from a seeded hash of the path, so that a dataset can
grow without any existing image changing split (see ``stratified_split``)."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd

from clip_lora_pipeline.core.errors import UserError
from clip_lora_pipeline.core.manifest import SPLITS

logger = logging.getLogger(__name__)


class SplitError(UserError, ValueError):
    """The data cannot be split as configured."""


def split_key(path: str, seed: int) -> float:
    """A uniform number in [0, 1) from the seed and an image's relative path alone.

    The first 8 bytes of sha256(f"{seed}:{path}") as a big-endian integer, its top 53
    bits divided by 2**53 (exactly representable, so never 1.0).
    """
    digest = hashlib.sha256(f"{seed}:{path}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / 2.0**53


def _first_drawn(group: pd.DataFrame, shots: int, seed: int) -> pd.DataFrame:
    """The ``shots`` images of a class with the smallest seeded hash of their path (a
    uniform draw without replacement). A class's draw depends on its own images only;
    images added later displace a drawn image only where their hash ranks below it, so
    a growing dataset keeps most of its sample (and its trained results) unchanged."""
    keys = [split_key(f"few-shot/{path}", seed) for path in group["path"].tolist()]
    return group.iloc[np.argsort(keys, kind="stable")[:shots]]


def _bounds(fractions: dict[str, float]) -> np.ndarray:
    """Upper ends of the splits' intervals of [0, 1), in the order of ``fractions``."""
    shares = np.array(list(fractions.values()), dtype=float)
    bounds = np.cumsum(shares / shares.sum())
    # From the last split with a nonzero share on, the bound is exactly 1: rounding can
    # neither leave a gap below 1 nor give a zero-share split a sliver.
    bounds[int(np.flatnonzero(shares > 0)[-1]):] = 1.0
    return bounds


def stratified_split(
    frame: pd.DataFrame, fractions: dict[str, float], seed: int,
    setting: str = "split.fractions",
) -> dict[str, pd.DataFrame]:
    """Split every class by ``fractions`` (split name -> share, summing to 1).

    An image goes to the split whose interval of [0, 1) holds ``split_key(path, seed)``;
    the intervals follow each other in the order of ``fractions``. Its split thus
    depends on its own path, the seed and the fractions only: adding images (to any
    class) moves no existing image, removing images moves none either, and the row order
    does not matter. Every class sees the same thresholds, so each class is split by
    ``fractions`` in expectation (the counts vary binomially around it).

    A class with fewer images than there are splits with a nonzero share, or in which
    such a split gets no image by chance, is an error naming the class. ``setting``
    names the configuration the fractions come from, for that message.
    """
    total = sum(fractions.values())
    if not np.isclose(total, 1.0) or any(v < 0 for v in fractions.values()):
        raise SplitError(f"split fractions must be >= 0 and sum to 1, got {fractions}.")
    frame = frame.reset_index(drop=True)
    names = list(fractions)
    wanted = [name for name in names if fractions[name] > 0]
    keys = np.array([split_key(path, seed) for path in frame["path"].tolist()], dtype=float)
    which = np.searchsorted(_bounds(fractions), keys, side="right")
    assigned = pd.Series(np.array(names, dtype=object)[which], index=frame.index)
    empty: dict[str, dict[str, int]] = {}
    for _, group in frame.groupby("label", sort=True):
        class_name = group["class_name"].iloc[0]
        if len(group) < len(wanted):
            raise SplitError(
                f"class '{class_name}' has {len(group)} image(s); a "
                f"stratified {'/'.join(wanted)} split needs at least {len(wanted)}. Add images "
                "to that class or remove it."
            )
        counts = assigned[group.index].value_counts()
        if any(counts.get(name, 0) == 0 for name in wanted):
            empty[class_name] = {name: int(counts.get(name, 0)) for name in names}
    if empty:
        # No rebalancing on purpose: moving an image into the empty split would make its
        # split depend on the other images of its class, and adding images later would
        # move it back. No rule can do both: if adding images never moves one, an image's
        # split is the same in every set it belongs to (compare each set with their
        # union), i.e. a function of the image alone, and then some small class lands
        # wholly in one split. So we stop and let the user choose. Adding images never
        # causes this error, it can only cure it.
        described = "; ".join(
            f"'{name}' ({', '.join(f'{s} {n}' for s, n in counts.items())})"
            for name, counts in list(empty.items())[:10]
        )
        raise SplitError(
            f"{len(empty)} class(es) got no image in a split by the seeded hash of their "
            f"paths (images per split): {described}. Each image's split is fixed by its "
            "path and split.seed so that adding images never moves one; small classes can "
            "miss a split by chance. Add images to those classes, try another split.seed, "
            f"change {setting}, or give fixed splits (train/val/test folders or a split_file)."
        )
    return {
        name: frame[assigned == name].sort_values("path", ignore_index=True)
        for name in names
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
    without splits is split stratified by ``fractions`` (keys train, val, test). Both are
    made by ``stratified_split``: an image's split depends only on its path, the seed and
    the fractions, so adding images to a dataset moves no existing image between splits.
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
                seed, setting="split.val_fraction_of_train",
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
            picked.append(_first_drawn(group, shots, seed))
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
