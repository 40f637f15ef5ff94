"""A CLIP-like few-shot cell on synthetic features, shared by the method tests."""

from __future__ import annotations

import numpy as np

from clip_lora_pipeline.core.methods.base import FeatureSet


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def clip_like_cell(seed: int, shots: int, *, classes: int = 10, dim: int = 64,
                   val_shots: int = 2, noise: float = 0.2, views: int = 4,
                   view_noise: float = 0.1, text_noise: float = 0.15
                   ) -> tuple[FeatureSet, np.ndarray, np.ndarray]:
    """Class means on the unit sphere; images share a direction (so classes look alike,
    as in CLIP) plus noise; views are jittered copies of the train images; the text
    classifier is the noisy means shifted along a direction of its own (the modality
    gap), so zero-shot is imperfect. Returns the cell and held-out features, labels."""
    rng = np.random.default_rng(seed)
    means, shared, gap = (unit(rng.normal(size=(classes, dim))), unit(rng.normal(size=dim)),
                          unit(rng.normal(size=dim)))

    def sample(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(classes), per_class)
        return unit(1.5 * shared + means[y] + noise * rng.normal(size=(len(y), dim))), y

    train_x, train_y = sample(shots)
    val_x, val_y = sample(val_shots)
    test_x, test_y = sample(100)
    train_views = unit(train_x[:, None] + view_noise * rng.normal(
        size=(len(train_x), views, dim)))
    text = unit(4 * gap + means + text_noise * rng.normal(size=(classes, dim)))
    return FeatureSet(train_x, train_y, val_x, val_y, text, 100.0, train_views), test_x, test_y
