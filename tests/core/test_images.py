"""Validation: every bad-input kind is rejected with a reason; every mode becomes RGB."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from clip_lora_pipeline.core.images import (
    BadImagesError,
    load_rgb,
    to_rgb,
    validate_images,
)
from clip_lora_pipeline.core.manifest import make_manifest


@pytest.fixture
def messy_folder(tmp_path, make_image):
    """One good image per mode plus every kind of bad file, in two classes."""
    root = tmp_path / "raw"
    make_image(root / "a/rgb.jpg", size=(30, 20))
    make_image(root / "a/grey.jpg", mode="L", size=(16, 12))
    make_image(root / "a/palette.png", mode="P")
    make_image(root / "a/rgba.png", mode="RGBA")
    make_image(root / "a/cmyk.jpg", mode="CMYK", size=(10, 8))
    make_image(root / "b/good.png")
    (root / "b/empty.jpg").write_bytes(b"")
    (root / "b/notes.txt").write_text("not an image")
    full = make_image(root / "b/whole.jpg", size=(64, 64)).read_bytes()
    (root / "b/truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "b/garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    labels = [0 if p.startswith("a/") else 1 for p in paths]
    return root, make_manifest(paths, labels, ["apple", "banana"])


def test_bad_files_are_rejected_with_reasons(messy_folder):
    root, manifest = messy_folder
    images, rejected = validate_images(manifest, root, num_workers=2)
    reasons = dict(zip(rejected["path"], rejected["reason"]))
    assert set(reasons) == {"b/empty.jpg", "b/notes.txt", "b/truncated.jpg", "b/garbage.png"}
    assert reasons["b/empty.jpg"] == "empty file (0 bytes)"
    assert reasons["b/notes.txt"].startswith("not an image file")
    assert reasons["b/truncated.jpg"].startswith("truncated or corrupt")
    assert set(images["path"]) == set(manifest["path"]) - set(reasons)
    assert len(images) + len(rejected) == len(manifest)


def test_modes_are_recorded_and_sizes_measured(messy_folder):
    root, manifest = messy_folder
    images, _ = validate_images(manifest, root)
    by_path = images.set_index("path")
    assert by_path.loc["a/cmyk.jpg", "mode"] == "CMYK"
    assert by_path.loc["a/grey.jpg", "mode"] == "L"
    assert (by_path.loc["a/rgb.jpg", "width"], by_path.loc["a/rgb.jpg", "height"]) == (30, 20)
    assert (by_path.loc["a/cmyk.jpg", "width"], by_path.loc["a/cmyk.jpg", "height"]) == (10, 8)


@pytest.mark.parametrize("name", ["grey.jpg", "palette.png", "rgba.png", "cmyk.jpg", "rgb.jpg"])
def test_every_mode_loads_as_rgb(messy_folder, name):
    root, _ = messy_folder
    image = load_rgb(root / "a" / name)
    assert image.mode == "RGB"


def test_transparency_is_composited_on_white():
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)
    opaque = Image.new("RGBA", (4, 4), (10, 20, 30, 255))
    assert to_rgb(opaque).getpixel((0, 0)) == (10, 20, 30)


def test_fail_mode_stops_and_names_the_files(messy_folder):
    root, manifest = messy_folder
    with pytest.raises(BadImagesError) as error:
        validate_images(manifest, root, on_bad_image="fail")
    assert "4 of 11 images" in str(error.value)
    assert str(root / "b/empty.jpg") in str(error.value)
    assert "on_bad_image" in str(error.value)


def test_unknown_policy_is_a_clear_error(messy_folder):
    root, manifest = messy_folder
    with pytest.raises(ValueError, match="on_bad_image"):
        validate_images(manifest, root, on_bad_image="ignore")


def test_a_class_left_without_images_is_an_error(tmp_path, make_image):
    make_image(tmp_path / "a/ok.png")
    (tmp_path / "b/broken.jpg").parent.mkdir()
    (tmp_path / "b/broken.jpg").write_bytes(b"")
    manifest = make_manifest(["a/ok.png", "b/broken.jpg"], [0, 1], ["apple", "banana"])
    with pytest.raises(BadImagesError, match="banana"):
        validate_images(manifest, tmp_path)


def test_clean_folder_has_empty_rejected_table(tmp_path, make_image):
    make_image(tmp_path / "a/x.png")
    images, rejected = validate_images(make_manifest(["a/x.png"], [0], ["apple"]), tmp_path)
    assert len(images) == 1 and rejected.empty
    assert list(rejected.columns) == ["path", "class_name", "reason"]
    assert isinstance(images, pd.DataFrame) and images["width"].dtype == "int64"
