"""Splits and few-shot sampling: reproducible, disjoint, stratified, stable when images
are added, clear errors."""

from __future__ import annotations

import hashlib

import numpy as np
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


def _reference_split(path, seed, fractions):
    """The documented rule, written out independently of the module."""
    digest = hashlib.sha256(f"{seed}:{path}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for name, share in fractions.items():
        cumulative += share
        if u < cumulative:
            return name
    return name


def _split_of(parts):
    return {path: name for name, frame in parts.items() for path in frame["path"]}


@pytest.mark.parametrize("seed", range(5))
def test_splits_are_disjoint_complete_and_follow_the_hash_of_the_path(seed):
    images = _images((60, 45, 30))
    parts = split_dataset(images, FRACTIONS, 0.2, seed=seed)
    sets = {k: set(v["path"]) for k, v in parts.items()}
    assert not sets["train"] & sets["val"]
    assert not sets["train"] & sets["test"]
    assert not sets["val"] & sets["test"]
    assert sets["train"] | sets["val"] | sets["test"] == set(images["path"])
    for name, frame in parts.items():
        assert set(frame["label"]) == {0, 1, 2}, name
        assert (frame["split"] == name).all()
        assert frame["path"].is_monotonic_increasing
    assert _split_of(parts) == {p: _reference_split(p, seed, FRACTIONS) for p in images["path"]}


def test_adding_images_moves_no_existing_image():
    before = _images((50,) * 20)
    # 10% more images in every class, with names that sort in between the old ones
    new_paths = [f"c{label}/img_{i:03d}_new.png" for label in range(20) for i in range(0, 50, 10)]
    added = make_manifest(before["path"].tolist() + new_paths,
                          before["label"].tolist() + [int(p[1:p.index("/")]) for p in new_paths],
                          [f"class {i}" for i in range(20)])
    assert len(added) == 1100 and set(before["path"]) < set(added["path"])
    for seed in (0, 1):
        old = _split_of(split_dataset(before, FRACTIONS, 0.2, seed=seed))
        new = _split_of(split_dataset(added, FRACTIONS, 0.2, seed=seed))
        assert {path: new[path] for path in old} == old
        # removing them again gives the old split back
        assert _split_of(split_dataset(added[added["path"].isin(old)], FRACTIONS, 0.2,
                                       seed=seed)) == old


def test_adding_a_class_moves_no_image_of_the_others():
    before = _images((30, 30))
    after = _images((30, 30, 30))
    old = _split_of(split_dataset(before, FRACTIONS, 0.2, seed=0))
    new = _split_of(split_dataset(after, FRACTIONS, 0.2, seed=0))
    assert {path: new[path] for path in old} == old


def test_carving_val_from_train_moves_nothing_when_images_are_added():
    def official(per_class):
        images = _images(per_class)
        index = images["path"].str.extract(r"img_(\d+)")[0].astype(int)
        images["source_split"] = np.where(index % 3 == 0, "test", "train")
        return images

    old = _split_of(split_dataset(official((60, 60)), FRACTIONS, 0.2, seed=0))
    new = _split_of(split_dataset(official((66, 66)), FRACTIONS, 0.2, seed=0))
    assert {path: new[path] for path in old} == old
    carve = {"train": 0.8, "val": 0.2}
    for path, name in old.items():
        if name != "test":
            assert name == _reference_split(path, 0, carve)


def test_proportions_per_class_are_close_to_the_fractions():
    images = _images((500,) * 20)
    parts = split_dataset(images, FRACTIONS, 0.2, seed=0)
    for name, share in FRACTIONS.items():
        per_class = parts[name]["label"].value_counts().reindex(range(20)) / 500
        # binomial standard deviation at n=500: 2.2 points for 0.6, 1.8 for 0.2
        assert (per_class - share).abs().max() < 0.07, (name, per_class.to_dict())
        assert abs(len(parts[name]) / len(images) - share) < 0.015


def test_a_different_seed_gives_a_different_assignment():
    images = _images((100, 100))
    first = _split_of(split_dataset(images, FRACTIONS, 0.2, seed=0))
    second = _split_of(split_dataset(images, FRACTIONS, 0.2, seed=1))
    moved = sum(first[path] != second[path] for path in first)
    # two independent draws disagree for 1 - (0.6² + 0.2² + 0.2²) = 56% of the images
    assert 0.4 < moved / len(first) < 0.7


def test_zero_fraction_split_stays_empty():
    images = _images((40, 40))
    parts = stratified_split(images, {"train": 0.7, "val": 0.0, "test": 0.3}, seed=0)
    assert parts["val"].empty
    assert len(parts["train"]) + len(parts["test"]) == 80


def test_official_split_is_kept_and_val_carved_from_train():
    splits = ["train"] * 10 + ["test"] * 10 + ["train"] * 10 + ["test"] * 10
    images = _images((20, 20), splits)
    parts = split_dataset(images, FRACTIONS, 0.2, seed=0)
    source_train = set(images[images["source_split"] == "train"]["path"])
    assert set(parts["test"]["path"]) == set(images[images["source_split"] == "test"]["path"])
    assert set(parts["val"]["path"]) | set(parts["train"]["path"]) == source_train
    assert not set(parts["val"]["path"]) & set(parts["train"]["path"])
    assert set(parts["val"]["label"]) == {0, 1}
    carve = {"train": 0.8, "val": 0.2}
    assert all(_reference_split(p, 0, carve) == "val" for p in parts["val"]["path"])


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


def test_a_split_left_empty_by_chance_is_an_error_naming_class_and_counts():
    # No image of class 1's 5 falls in val by its hash (seed 6); none is moved there,
    # since it would move back once images are added.
    images = _images((30, 5))
    with pytest.raises(SplitError) as error:
        split_dataset(images, FRACTIONS, 0.2, seed=6)
    message = str(error.value)
    assert "'class 1' (train 3, val 0, test 2)" in message
    assert "class 0" not in message
    assert "split.seed" in message and "split.fractions" in message
    # more images cure it without moving the 5
    grown = split_dataset(_images((30, 40)), FRACTIONS, 0.2, seed=6)
    assert all(_reference_split(p, 6, FRACTIONS) == name
               for name, frame in grown.items() for p in frame["path"])
    # carving val out of train names the setting it comes from
    official = _images((30, 4), ["train"] * 20 + ["test"] * 10 + ["train"] * 3 + ["test"])
    with pytest.raises(SplitError, match=r"'class 1' \(train 3, val 0\).*val_fraction_of_train"):
        split_dataset(official, FRACTIONS, 0.2, seed=1)


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


def test_adding_images_to_one_class_leaves_another_class_few_shot_sample_unchanged():
    train = _images((30, 30))
    grown = _images((30, 45))
    added = set(grown["path"]) - set(train["path"])
    for shots in (4, 16):
        before = sample_few_shot(train, shots, seed=1, split="train")
        after = sample_few_shot(grown, shots, seed=1, split="train")
        pd.testing.assert_frame_equal(before[before["label"] == 0].reset_index(drop=True),
                                      after[after["label"] == 0].reset_index(drop=True))
        # in the grown class, a drawn image leaves the sample only for an added one
        old, new = (set(frame[frame["label"] == 1]["path"]) for frame in (before, after))
        assert new - old <= added and len(new - old) == len(old - new)
        assert len(old & new) >= shots // 2  # most stay: 15 of 45 images are new


def test_few_shot_draw_is_the_k_smallest_keys_of_the_class():
    # drawing 4 of a class then growing it to all: the 4 are the first 4 of a larger draw
    train = _images((40, 40))
    small = sample_few_shot(train, 4, seed=3, split="train")
    large = sample_few_shot(train, 12, seed=3, split="train")
    for label in (0, 1):
        assert set(small[small["label"] == label]["path"]) \
            < set(large[large["label"] == label]["path"])
    assert not small.equals(sample_few_shot(train, 4, seed=4, split="train"))
