"""Split files in CoOp's format: reading them into a manifest, writing them, and the
errors a broken one gives."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from clip_lora_pipeline.core.manifest import MANIFEST_COLUMNS, make_manifest
from clip_lora_pipeline.core.split_file import (
    SplitFileError,
    read_split_file,
    write_split_file,
)

SPLIT = {
    "train": [["apple_pie/1.jpg", 0, "apple_pie"], ["waffles/2.jpg", 1, "waffles"],
              ["apple_pie/3.jpg", 0, "apple_pie"]],
    "val": [["waffles/4.jpg", 1, "waffles"]],
    "test": [["apple_pie/5.jpg", 0, "apple_pie"], ["waffles/6.jpg", 1, "waffles"]],
}


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def place_images(root: Path, image_dir: str, data: dict, make_image) -> None:
    for entries in data.values():
        for rel, *_ in entries:
            make_image(root / image_dir / rel)


@pytest.fixture
def food(tmp_path, make_image) -> Path:
    place_images(tmp_path, "food-101/images", SPLIT, make_image)
    make_image(tmp_path / "food-101/images/waffles/not_listed.jpg")
    write_json(tmp_path / "split.json", SPLIT)
    return tmp_path


def test_read_follows_the_file(food):
    frame = read_split_file(food / "split.json", food, "food-101/images")
    assert list(frame.columns) == MANIFEST_COLUMNS
    got = {(r.path, r.label, r.class_name, r.source_split) for r in frame.itertuples()}
    assert got == {
        (f"food-101/images/{rel}", label, name.replace("_", " "), split)
        for split, entries in SPLIT.items() for rel, label, name in entries
    }
    assert "food-101/images/waffles/not_listed.jpg" not in set(frame["path"])


def test_val_may_be_absent(food, tmp_path):
    path = write_json(tmp_path / "no_val.json", {"train": SPLIT["train"], "test": SPLIT["test"]})
    frame = read_split_file(path, food, "food-101/images")
    assert set(frame["source_split"]) == {"train", "test"}


def test_write_then_read_round_trips(food, tmp_path):
    frame = read_split_file(food / "split.json", food, "food-101/images")
    written = write_split_file(tmp_path / "out" / "again.json", frame, "food-101/images")
    data = json.loads(written.read_text())
    assert sorted(data) == ["test", "train", "val"]
    assert ["apple_pie/1.jpg", 0, "apple pie"] in data["train"]
    assert read_split_file(written, food, "food-101/images").equals(frame)
    assert [p.name for p in written.parent.iterdir()] == ["again.json"]  # no temp left


def test_write_needs_a_split_for_every_row_and_paths_under_image_dir(tmp_path):
    unsplit = make_manifest(["a/1.jpg"], [0], ["a"])
    with pytest.raises(SplitFileError, match="needs a source_split"):
        write_split_file(tmp_path / "s.json", unsplit)
    split = make_manifest(["a/1.jpg"], [0], ["a"], ["train"])
    with pytest.raises(SplitFileError, match=r"not under image_dir 'images'"):
        write_split_file(tmp_path / "s.json", split, "images")
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize(("text", "expected"), [
    ('{"train": [', r"not valid JSON \(.* at line 1, column \d+\)"),
    ('[["a.jpg", 0, "a"]]', "expected an object with keys"),
    ('{"train": [["a.jpg", 0, "a"]], "test": [], "holdout": []}', r"unknown keys \['holdout'\]"),
    ('{"train": [["a.jpg", 0, "a"]], "test": []}', r"\['test'\] missing or empty"),
])
def test_malformed_file_is_named(tmp_path, text, expected):
    path = tmp_path / "split_zhou_Broken.json"
    path.write_text(text)
    with pytest.raises(SplitFileError, match=expected) as err:
        read_split_file(path, tmp_path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("entry", [
    ["a.jpg", "0", "a"],           # label as text
    ["a.jpg", True, "a"],          # a bool is not a label
    ["a.jpg", 0],                  # class name missing
    ["/abs/a.jpg", 0, "a"],        # absolute path
    ["../a.jpg", 0, "a"],          # outside the image folder
    ["a.jpg", 0, ""],              # empty class name
    "a.jpg 0 a",
])
def test_malformed_entry_is_shown(tmp_path, entry):
    path = write_json(tmp_path / "s.json", {"train": [["ok.jpg", 0, "a"], entry],
                                            "test": [["t.jpg", 0, "a"]]})
    with pytest.raises(SplitFileError, match=r"1 malformed entries.*train\[1\]") as err:
        read_split_file(path, tmp_path)
    assert "[relative path, integer label, class name]" in str(err.value)


def test_label_with_two_class_names_fails(tmp_path):
    path = write_json(tmp_path / "s.json", {"train": [["a.jpg", 0, "cat"]],
                                            "test": [["b.jpg", 0, "dog"]]})
    with pytest.raises(SplitFileError, match="label 0 is both 'cat' and 'dog'"):
        read_split_file(path, tmp_path)


def test_labels_must_be_0_to_k_minus_1(tmp_path):
    path = write_json(tmp_path / "s.json", {"train": [["a.jpg", 0, "cat"], ["b.jpg", 3, "dog"]],
                                            "test": [["c.jpg", 1, "cow"]]})
    with pytest.raises(SplitFileError, match=r"labels must be 0..K-1.*missing \[2\]") as err:
        read_split_file(path, tmp_path)
    assert str(path) in str(err.value)


def test_two_labels_with_one_name_fail(tmp_path):
    path = write_json(tmp_path / "s.json", {"train": [["a.jpg", 0, "car_side"]],
                                            "test": [["b.jpg", 1, "car side"]]})
    with pytest.raises(SplitFileError, match="labels 0 and 1 are both named 'car side'"):
        read_split_file(path, tmp_path)


def test_file_listed_twice_fails(tmp_path, make_image):
    make_image(tmp_path / "a.jpg")
    path = write_json(tmp_path / "s.json", {"train": [["a.jpg", 0, "cat"]],
                                            "test": [["a.jpg", 0, "cat"]]})
    with pytest.raises(SplitFileError, match=r"1 files listed twice, e.g. \['a.jpg'\]"):
        read_split_file(path, tmp_path)


def test_missing_files_are_counted_with_examples_and_layout(food, tmp_path):
    for rel in ("apple_pie/1.jpg", "waffles/6.jpg"):
        (food / "food-101/images" / rel).unlink()
    with pytest.raises(SplitFileError) as err:
        read_split_file(food / "split.json", food, "food-101/images", layout="  food-101/images/<class>/<id>.jpg")
    message = str(err.value)
    assert message.startswith(str(food / "split.json"))
    assert "2 of 6 listed files are missing under " + str(food / "food-101/images") in message
    assert re.search(r"e\.g\. \['apple_pie/1\.jpg', 'waffles/6\.jpg'\]", message)
    assert "food-101/images/<class>/<id>.jpg" in message


def test_missing_split_file_is_named(tmp_path):
    with pytest.raises(SplitFileError, match=re.escape(f"Split file {tmp_path / 'x.json'} not found")):
        read_split_file(tmp_path / "x.json", tmp_path)
