"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022) on cached CLIP features.

A cache model adds to zero-shot CLIP's logits a vote of the few-shot train images:
keys are their features, values their one-hot labels, and a query x scores

    logit_scale * x @ text.T + alpha * exp(-beta * (1 - x @ keys.T)) @ values

so beta sets how sharply it attends to its nearest train images and alpha how much
that vote weighs against zero-shot. Facts (formula, search grid, optimiser, schedule)
are those of the official code, github.com/gaopengcuhk/Tip-Adapter: main.py, utils.py
(build_cache_model, search_hp) and configs/*.yaml. The training-free Tip-Adapter is
here; Tip-Adapter-F, which trains the keys, in ``tip_adapter_f``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from clip_lora_pipeline.core.methods.base import (
    FeatureMethod,
    FeatureSet,
    Fitted,
    MethodError,
)

# configs/imagenet.yaml, the generic config (oxford_pets and ucf101 use the same): beta
# searched over [0.1, 7), alpha over [0.1, 3). search_step is (200, 20) in every config.
DEFAULT_SEARCH_SCALE = (7.0, 3.0)
DEFAULT_SEARCH_STEP = (200, 20)
GRID_START = 0.1  # utils.search_hp: every grid starts here


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive(owner: str, name: str, value, *, integer: bool = False) -> None:
    """Raise a MethodError naming the setting unless ``value`` is a positive number
    (a positive integer when ``integer``)."""
    ok = is_integer(value) if integer else _is_number(value)
    if not ok or value <= 0:
        kind = "a positive integer" if integer else "a positive number"
        raise MethodError(f"{owner}: setting {name!r} must be {kind}; got {value!r}.")


@dataclass(frozen=True)
class TipAdapterSettings:
    """``search_scale`` (beta, alpha) and ``search_step`` (beta, alpha): the val grid,
    ``step`` values from 0.1 up to (not including) ``scale``, as utils.search_hp.
    Defaults from configs/imagenet.yaml. ``prompt_set``: the zero-shot classifier."""

    prompt_set: str = "simple"
    search_scale: tuple[float, float] = DEFAULT_SEARCH_SCALE
    search_step: tuple[int, int] = DEFAULT_SEARCH_STEP

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if not isinstance(self.prompt_set, str) or not self.prompt_set:
            raise MethodError(f"{owner}: setting 'prompt_set' must name an entry of "
                              f"'prompt_sets'; got {self.prompt_set!r}.")
        for name in ("search_scale", "search_step"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise MethodError(f"{owner}: setting {name!r} must be a pair [beta, alpha];"
                                  f" got {value!r}.")
            # YAML gives lists; a tuple keeps the frozen settings hashable.
            object.__setattr__(self, name, tuple(value))
        for which, scale in zip(("beta", "alpha"), self.search_scale, strict=True):
            if not _is_number(scale) or scale <= GRID_START:
                raise MethodError(f"{owner}: setting 'search_scale' ({which}) must be a "
                                  f"number above {GRID_START}; got {scale!r}.")
        for which, step in zip(("beta", "alpha"), self.search_step, strict=True):
            check_positive(owner, f"search_step ({which})", step, integer=True)

    def grids(self) -> tuple[np.ndarray, np.ndarray]:
        """The beta and alpha candidates, in the official search order."""
        return tuple(np.array([i * (scale - GRID_START) / step + GRID_START
                               for i in range(step)])
                     for scale, step in zip(self.search_scale, self.search_step, strict=True))


def cache_keys(data: FeatureSet) -> np.ndarray:
    """The cache keys: each train image's augmented views averaged, then normalised
    (build_cache_model averages ``augment_epoch`` views); its plain features when the
    cell has no views. Our views are already normalised, the official ones are not."""
    if data.train_views is None:  # a copy: Tip-Adapter-F trains the keys in place
        return np.array(data.train_x, dtype=np.float32)
    keys = np.asarray(data.train_views, dtype=np.float32).mean(axis=1)
    return keys / np.linalg.norm(keys, axis=1, keepdims=True)


def check_data(name: str, data: FeatureSet) -> None:
    if len(data.val_y) == 0:
        raise MethodError(f"{name}: searches alpha and beta on val, and the cell's val "
                          "split is empty.")
    if data.text.shape[1] != data.train_x.shape[1]:
        raise MethodError(f"{name}: the text classifier has width {data.text.shape[1]}, "
                          f"the image features {data.train_x.shape[1]}: were both made "
                          "with the same model?")


@dataclass(frozen=True)
class Cache:
    """The key-value cache. Keys sorted by label, so that ``@ one-hot values`` is a sum
    over each class's run of columns: the same numbers without a (keys x classes)
    matmul per beta, which dominated the search."""

    keys: np.ndarray  # (keys, dim)
    labels: np.ndarray  # (keys,), non-decreasing
    n_classes: int

    @classmethod
    def build(cls, keys: np.ndarray, labels: np.ndarray, n_classes: int) -> Cache:
        order = np.argsort(labels, kind="stable")
        return cls(np.ascontiguousarray(keys[order], dtype=np.float32),
                   np.asarray(labels, dtype=np.int64)[order], n_classes)

    def affinity(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32) @ self.keys.T

    def vote(self, affinity: np.ndarray, beta: float) -> np.ndarray:
        """exp(-beta * (1 - affinity)) @ values (main.py run_tip_adapter)."""
        present, starts = np.unique(self.labels, return_index=True)
        votes = np.zeros((len(affinity), self.n_classes), dtype=np.float32)
        votes[:, present] = np.add.reduceat(np.exp(np.float32(beta) * (affinity - 1)),
                                            starts, axis=1)
        return votes


def search_alpha_beta(settings: TipAdapterSettings, data: FeatureSet, cache: Cache
                      ) -> tuple[pd.DataFrame, float, float]:
    """Val accuracy of every (beta, alpha) of the grid, and the first best in the
    official loop order (beta outer, alpha inner; a later tie does not replace it)."""
    betas, alphas = settings.grids()
    affinity = cache.affinity(data.val_x)
    clip = data.zero_shot_logits(data.val_x).astype(np.float32)
    correct = np.empty((len(betas), len(alphas)), dtype=np.int64)
    for i, beta in enumerate(betas):
        votes = cache.vote(affinity, beta)
        for j, alpha in enumerate(alphas):
            correct[i, j] = ((clip + np.float32(alpha) * votes).argmax(axis=1)
                             == data.val_y).sum()
    best = int(correct.argmax())
    table = pd.DataFrame({"beta": np.repeat(betas, len(alphas)),
                          "alpha": np.tile(alphas, len(betas)),
                          "val_accuracy": correct.ravel() / len(data.val_y)})
    return table, float(betas[best // len(alphas)]), float(alphas[best % len(alphas)])


LOGIT_ROWS = 4096  # images scored at once: the affinity to every key is (rows, keys)


def tip_logits(cache: Cache, text: np.ndarray, logit_scale: float, beta: float,
               alpha: float, x: np.ndarray) -> np.ndarray:
    """Logits in chunks of rows: at once, ImageNet's 50,000 test images against 16,000
    keys would need about 9.5 GiB."""
    x = np.asarray(x, dtype=np.float32)
    chunks = [np.float32(logit_scale) * part @ text.T
              + np.float32(alpha) * cache.vote(cache.affinity(part), beta)
              for part in np.array_split(x, max(1, -(-len(x) // LOGIT_ROWS)))]
    return np.concatenate(chunks) if chunks else np.empty((0, len(text)), np.float32)


class TipAdapter(FeatureMethod):
    """Training-free: the cache is built from train (views averaged when given), alpha
    and beta are searched on val."""

    name = "tip_adapter"
    Settings = TipAdapterSettings
    description = ("Tip-Adapter: zero-shot CLIP plus a key-value cache of the few-shot "
                   "train features; alpha and beta searched on val (training-free).")
    uses_views = True

    def fit(self, data: FeatureSet, settings: TipAdapterSettings) -> Fitted:
        check_data(self.name, data)
        cache = Cache.build(cache_keys(data), data.train_y, data.n_classes)
        table, beta, alpha = search_alpha_beta(settings, data, cache)
        return fitted_model(self.name, data, cache, beta, alpha, table)

    def logits(self, fitted: Fitted, x: np.ndarray) -> np.ndarray:
        a, c = fitted.arrays, fitted.config
        cache = Cache.build(a["keys"], a["key_labels"], len(a["text"]))
        return tip_logits(cache, a["text"], c["logit_scale"], c["beta"], c["alpha"], x)


def fitted_model(name: str, data: FeatureSet, cache: Cache, beta: float, alpha: float,
                 search: pd.DataFrame, **selected) -> Fitted:
    """What is stored: the text classifier, the cache, the logit scale, alpha, beta."""
    arrays = {"text": np.asarray(data.text, dtype=np.float32), "keys": cache.keys,
              "key_labels": cache.labels}
    config = {"logit_scale": float(data.logit_scale), "beta": beta, "alpha": alpha}
    return Fitted(name, arrays, config, {"beta": beta, "alpha": alpha, **selected}, search)
