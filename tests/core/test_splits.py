"""Splits and few-shot sampling: reproducible, disjoint, stratified, clear errors."""

from __future__ import annotations

import pandas as pd
import pytest

from clip_lora_pipeline.core.manifest import make_manifest
from clip_lora_pipeline.core.splits import (
    SplitError,
    sample_few_shot,
    split_dataset,
    stratified_split,
)

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def _images(per_class=(20, 20, 20), splits=None):
    paths, labels = [], []
    for label, count in enumerate(per_class):
        for i in range(count):
            paths.append(f"c{label}/img_{i:03d}.png")
            labels.append(label)
    names = [f"class {i}" for i in range(len(per_class))]
    return make_manifest(paths, labels, names, splits)


def test_same_seed_same_split_and_row_order_does_not_matter():
    images = _images()
    first = split_dataset(images, FRACTIONS, 0.2, seed=3)
    shuffled = images.sample(frac=1.0, random_state=7)
    second = split_dataset(shuffled, FRACTIONS, 0.2, seed=3)
    for name in ("train", "val", "test"):
        pd.testing.assert_frame_equal(first[name], second[name])
    other = split_dataset(images, FRACTIONS, 0.2, seed=4)
    assert set(other["test"]["path"]) != set(first["test"]["path"])


@pytest.mark.parametrize("seed", range(5))
def test_splits_are_disjoint_complete_and_stratified(seed):
    images = _images((20, 11, 7))
    parts = split_dataset(images, FRACTIONS, 0.2, seed=seed)
    sets = {k: set(v["path"]) for k, v in parts.items()}
    assert not sets["train"] & sets["val"]
    assert not sets["train"] & sets["test"]
    assert not sets["val"] & sets["test"]
    assert sets["train"] | sets["val"] | sets["test"] == set(images["path"])
    for name, frame in parts.items():
        assert set(frame["label"]) == {0, 1, 2}, name
        assert (frame["split"] == name).all()
    assert parts["test"]["label"].value_counts()[0] == 4


def test_official_split_is_kept_and_val_carved_from_train():
    splits = ["train"] * 10 + ["test"] * 10 + ["train"] * 10 + ["test"] * 10
    images = _images((20, 20), splits)
    parts = split_dataset(images, FRACTIONS, 0.2, seed=0)
    assert set(parts["test"]["path"]) == set(images[images["source_split"] == "test"]["path"])
    assert len(parts["val"]) == 4 and len(parts["train"]) == 16
    assert set(parts["val"]["path"]) <= set(images[images["source_split"] == "train"]["path"])


def test_official_val_is_used_as_is():
    splits = (["train"] * 6 + ["val"] * 2 + ["test"] * 2) * 2
    images = _images((10, 10), splits)
    parts = split_dataset(images, FRACTIONS, 0.2, seed=0)
    assert len(parts["val"]) == 4
    assert set(parts["val"]["path"]) == set(images[images["source_split"] == "val"]["path"])


def test_partial_source_split_is_an_error():
    images = _images((3, 3), ["train", None, "test", "train", "train", "test"])
    with pytest.raises(SplitError, match="no source split"):
        split_dataset(images, FRACTIONS, 0.2, seed=0)


def test_official_split_without_test_is_an_error():
    images = _images((3,), ["train"] * 3)
    with pytest.raises(SplitError, match="no 'test'"):
        split_dataset(images, FRACTIONS, 0.2, seed=0)


def test_too_small_class_for_a_stratified_split_names_it():
    with pytest.raises(SplitError, match="'class 1' has 2 image"):
        stratified_split(_images((10, 2)), FRACTIONS, seed=0)


def test_fractions_must_sum_to_one():
    with pytest.raises(SplitError, match="sum to 1"):
        stratified_split(_images(), {"train": 0.5, "val": 0.2, "test": 0.2}, seed=0)


@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
def test_few_shot_takes_k_per_class_reproducibly(shots):
    train = split_dataset(_images((40, 40, 40)), FRACTIONS, 0.2, seed=0)["train"]
    sample = sample_few_shot(train, shots, seed=1, split="train")
    assert sample["label"].value_counts().to_dict() == {0: shots, 1: shots, 2: shots}
    assert set(sample["path"]) <= set(train["path"])
    pd.testing.assert_frame_equal(sample, sample_few_shot(train.iloc[::-1], shots, 1, "train"))


def test_too_few_images_for_k_shots_names_class_and_count():
    train = _images((20, 3))
    with pytest.raises(SplitError) as error:
        sample_few_shot(train, 4, seed=0, split="train")
    assert "'class 1' has 3 train image(s), fewer than the 4" in str(error.value)
    assert "allow_repeats: true" in str(error.value)


def test_repeats_fill_up_only_the_short_classes_reproducibly(caplog):
    train = _images((20, 3, 1))
    with caplog.at_level("WARNING"):
        sample = sample_few_shot(train, 8, seed=0, split="train", allow_repeats=True)
    assert sample["label"].value_counts().to_dict() == {0: 8, 1: 8, 2: 8}
    counts = sample.groupby("label")["path"]
    assert counts.nunique().to_dict() == {0: 8, 1: 3, 2: 1}  # a short class: all its images
    assert set(sample["path"]) <= set(train["path"])
    assert "class 1': 3" in caplog.text and "class 2': 1" in caplog.text
    assert "class 0" not in caplog.text
    again = sample_few_shot(train.iloc[::-1], 8, seed=0, split="train", allow_repeats=True)
    pd.testing.assert_frame_equal(sample, again)
    other = sample_few_shot(train, 8, seed=1, split="train", allow_repeats=True)
    assert not other.equals(sample)
    # a full class draws what it would without repeats
    plain = sample_few_shot(train[train["label"] == 0], 8, seed=0, split="train")
    pd.testing.assert_frame_equal(sample[sample["label"] == 0].reset_index(drop=True), plain)


def test_all_shots_keeps_everything():
    train = _images((5, 6))
    assert len(sample_few_shot(train, None, seed=0, split="train")) == 11
