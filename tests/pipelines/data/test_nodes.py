"""One test (or a few) per data node, on generated images."""

from __future__ import annotations

from pathlib import Path

import pytest

from clip_lora_pipeline.core.sources import SourceError
from clip_lora_pipeline.core.splits import SplitError, split_dataset
from clip_lora_pipeline.pipelines.data.nodes import download, few_shot, split, validate

SPLIT = {"seed": 0, "fractions": {"train": 0.6, "val": 0.2, "test": 0.2},
         "val_fraction_of_train": 0.2}


@pytest.fixture
def synthetic(tmp_path):
    return {
        "source": "synthetic",
        "root": str(tmp_path / "synthetic"),
        "options": {"num_classes": 5, "images_per_class": 10, "image_size": 32, "seed": 0},
    }


def test_download_generates_and_indexes(synthetic):
    manifest = download(synthetic, {"timeout": 5})
    assert len(manifest) == 50
    assert manifest["label"].nunique() == 5
    assert list(manifest.columns) == ["path", "label", "class_name", "source_split"]


def test_download_rejects_unknown_option_and_bad_entry(synthetic):
    with pytest.raises(SourceError, match="'colour'"):
        download({**synthetic, "options": {"colour": "red"}}, {})
    with pytest.raises(SourceError, match="needs 'source' and 'root'"):
        download({"source": "synthetic"}, {})


def test_download_of_image_folder_that_does_not_exist(tmp_path):
    with pytest.raises(SourceError, match="is not a folder"):
        download({"source": "image_folder", "root": str(tmp_path / "nope")}, {})


def test_validate_skips_and_reports(synthetic, caplog):
    manifest = download(synthetic, {})
    broken = manifest["path"].iloc[0]
    (Path(synthetic["root"]) / broken).write_bytes(b"")
    images, rejected = validate(manifest, synthetic, {"on_bad_image": "skip"})
    assert rejected["path"].tolist() == [broken]
    assert len(images) == 49
    assert "1 of 50 images" in caplog.text


def _split_sizes(images) -> tuple[int, int, int]:
    """Train, val and test sizes as the core split makes them: by the seeded hash of each
    image's path, so they vary around the fractions instead of being exact."""
    parts = split_dataset(images, SPLIT["fractions"], SPLIT["val_fraction_of_train"],
                          SPLIT["seed"])
    return tuple(len(parts[name]) for name in ("train", "val", "test"))


def test_split_then_few_shot(synthetic):
    # 30 per class: at seed 0 every class gets >= 12 train and >= 3 val images (4 and 2
    # are sampled below); with 10, a class draws a single val image.
    synthetic["options"]["images_per_class"] = 30
    images, _ = validate(download(synthetic, {}), synthetic, {})
    train_pool, val_pool, test = split(images, SPLIT)
    sizes = (len(train_pool), len(val_pool), len(test))
    assert sizes == _split_sizes(images) and sum(sizes) == 150
    for pool in (train_pool, val_pool, test):
        assert pool["label"].nunique() == 5
    train, val = few_shot(train_pool, val_pool, test, 4, 2, 1)
    assert train.groupby("label").size().tolist() == [4] * 5
    assert val.groupby("label").size().tolist() == [2] * 5
    assert not set(train["path"]) & set(val["path"])
    assert not (set(train["path"]) | set(val["path"])) & set(test["path"])


def test_few_shot_val_defaults_to_min_k_4(synthetic):
    # 50 per class: at seed 0 the smallest class's val pool holds 5 images (4 are needed);
    # 30 leaves one class 3.
    synthetic["options"]["images_per_class"] = 50
    images, _ = validate(download(synthetic, {}), synthetic, {})
    train_pool, val_pool, test = split(images, SPLIT)
    assert val_pool.groupby("label").size().min() >= 4
    train, val = few_shot(train_pool, val_pool, test, 8, None, 1)
    assert val.groupby("label").size().tolist() == [4] * 5
    _, val_two = few_shot(train_pool, val_pool, test, 2, None, 1)
    assert val_two.groupby("label").size().tolist() == [2] * 5


def test_few_shot_too_many_shots_is_an_error(synthetic):
    images, _ = validate(download(synthetic, {}), synthetic, {})
    parts = split(images, SPLIT)
    per_class = parts[0].groupby("label", sort=True).agg(
        n=("path", "size"), class_name=("class_name", "first"))
    short = per_class[per_class["n"] < 8]
    assert not short.empty  # 10 images per class: some class keeps fewer than 8
    # the message names the first short class and its count
    name, count = short["class_name"].iloc[0], short["n"].iloc[0]
    with pytest.raises(SplitError, match=rf"class '{name}' has {count} train image\(s\), "
                                         "fewer than the 8"):
        few_shot(*parts, 8, 1, 1)


def test_few_shot_class_missing_from_train_is_an_error(synthetic):
    images, _ = validate(download(synthetic, {}), synthetic, {})
    train_pool, val_pool, test = split(images, SPLIT)
    with pytest.raises(SplitError, match="no train image"):
        few_shot(train_pool[train_pool["label"] != 0], val_pool, test,
                 1, 1, 1)
