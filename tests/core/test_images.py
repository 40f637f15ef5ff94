"""Validation: every bad-input kind is rejected with a reason; every mode becomes RGB."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clip_lora_pipeline.core.color import to_rgb
from clip_lora_pipeline.core.images import (
    BadImagesError,
    check_image,
    image_files,
    load_rgb,
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
    assert reasons["b/garbage.png"].startswith("truncated or corrupt image: starts like a PNG")
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


def test_fail_mode_error_carries_the_rejected_table(messy_folder):
    root, manifest = messy_folder
    with pytest.raises(BadImagesError) as error:
        validate_images(manifest, root, on_bad_image="fail")
    assert sorted(error.value.rejected["path"]) == [
        "b/empty.jpg", "b/garbage.png", "b/notes.txt", "b/truncated.jpg"
    ]


def test_a_class_left_without_images_is_an_error(tmp_path, make_image):
    make_image(tmp_path / "a/ok.png")
    (tmp_path / "b/broken.jpg").parent.mkdir()
    (tmp_path / "b/broken.jpg").write_bytes(b"")
    manifest = make_manifest(["a/ok.png", "b/broken.jpg"], [0, 1], ["apple", "banana"])
    with pytest.raises(BadImagesError, match="banana"):
        validate_images(manifest, tmp_path)


def test_a_lost_class_is_named_by_its_folder_and_its_files_listed(tmp_path, make_image):
    for rel in ("train/tabby_cat/ok.png", "test/tabby_cat/ok.png"):
        make_image(tmp_path / rel)
    for rel in ("train/golden_retriever/x/1.jpg", "train/golden_retriever/2.jpg",
                "test/golden_retriever/3.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"\xff\xd8\xff\xe0" + b"junk" * 10)
    paths = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*"))
    manifest = make_manifest(
        paths, [0 if "golden" in p else 1 for p in paths], ["golden retriever", "tabby cat"],
        [p.split("/")[0] for p in paths],
    )
    with pytest.raises(BadImagesError) as error:
        validate_images(manifest, tmp_path)
    message = str(error.value)
    folders = f"{tmp_path / 'test/golden_retriever'}, {tmp_path / 'train/golden_retriever'}"
    assert f"{folders} (class 'golden retriever'): 3 file(s), none readable" in message
    assert str(tmp_path / "train/golden_retriever/x/1.jpg") in message
    assert "options.exclude" in message
    assert len(error.value.rejected) == 3


# ------------------------------------------------------------- corrupt bodies


@pytest.mark.parametrize(
    ("signature", "fmt"),
    [(b"\xff\xd8\xff\xe0", "JPEG"), (b"\xff\xd8\xff\xdb", "JPEG"),
     (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF89a", "GIF"), (b"II*\x00", "TIFF"),
     (b"RIFF\x10\x00\x00\x00WEBP", "WebP")],
)
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_a_valid_signature_with_a_garbage_body_is_corrupt_not_unknown(tmp_path, signature, fmt):
    path = tmp_path / "broken.img"
    path.write_bytes(signature + bytes(range(256)) * 2)
    reason = check_image(path).reason
    assert reason.startswith("truncated or corrupt image"), reason
    assert fmt in reason


def test_a_text_file_is_still_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("shopping list")
    assert check_image(tmp_path / "notes.jpg").reason == "not an image file (unrecognised format)"


def test_clean_folder_has_empty_rejected_table(tmp_path, make_image):
    make_image(tmp_path / "a/x.png")
    images, rejected = validate_images(make_manifest(["a/x.png"], [0], ["apple"]), tmp_path)
    assert len(images) == 1 and rejected.empty
    assert list(rejected.columns) == ["path", "class_name", "reason"]
    assert isinstance(images, pd.DataFrame) and images["width"].dtype == "int64"


# ------------------------------------------------------------- high bit depth


def _gradient(top: int = 65535, width: int = 64) -> np.ndarray:
    return np.tile(np.linspace(0, top, width).round(), (4, 1))


def _greyscale_row(path) -> np.ndarray:
    pixels = np.asarray(load_rgb(path))
    assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    return pixels[0, :, 0].astype(int)


@pytest.mark.parametrize(("mode", "fmt", "dtype"), [
    ("I;16", "PNG", "<u2"), ("I;16", "TIFF", "<u2"), ("I;16B", "TIFF", ">u2"),
])
def test_a_full_range_16_bit_gradient_spans_0_to_255(tmp_path, mode, fmt, dtype):
    path = tmp_path / f"deep.{fmt.lower()}"
    values = _gradient().astype(dtype)
    Image.frombytes(mode, (64, 4), values.tobytes()).save(path, format=fmt)
    row = _greyscale_row(path)
    assert row[0] == 0 and row[-1] == 255
    assert (np.diff(row) > 0).all()  # 64 steps over 0..255: every step is visible
    assert np.abs(row - values[0] / 257).max() <= 0.5


def test_a_dark_16_bit_image_stays_dark(tmp_path):
    # The 16-bit range maps to 0..255, not the image's own maximum.
    path = tmp_path / "dark.png"
    Image.frombytes("I;16", (64, 4), _gradient(top=4095).astype("<u2").tobytes()).save(path)
    assert _greyscale_row(path).max() == 16


def test_a_16_bit_pgm_opened_as_mode_i_is_scaled(tmp_path):
    path = tmp_path / "deep.pgm"
    path.write_bytes(b"P5 64 4 65535\n" + _gradient().astype(">u2").tobytes())
    assert Image.open(path).mode == "I"
    row = _greyscale_row(path)
    assert (row[0], row[-1]) == (0, 255) and (np.diff(row) > 0).all()


@pytest.mark.parametrize(("top", "expected"), [(1.0, 255), (0.5, 128), (1000.0, 255)])
def test_float_images_are_scaled(tmp_path, top, expected):
    # 0..1 floats keep that range; larger values are scaled by the image's maximum.
    path = tmp_path / "float.tiff"
    Image.fromarray(np.tile(np.linspace(0, top, 64, dtype=np.float32), (4, 1))).save(path)
    assert Image.open(path).mode == "F"
    row = _greyscale_row(path)
    assert row[0] == 0 and row[-1] == expected and (np.diff(row) >= 0).all()
    assert abs(row[31] - expected * 31 / 63) <= 1  # linear, not clipped


def _png16(path, colour_type: int, channels: int, values: np.ndarray) -> None:
    """A 16-bit PNG written by hand: PIL cannot save 16-bit colour."""
    height, width = values.shape
    pixels = np.repeat(values[..., None], channels, axis=2).astype(">u2")
    if colour_type in (4, 6):
        pixels[..., -1] = 65535  # opaque
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize(("colour_type", "channels"), [(2, 3), (6, 4), (4, 2)])
def test_16_bit_colour_and_alpha_pngs_keep_their_range(tmp_path, colour_type, channels):
    # PIL reduces these to 8 bits per channel itself (RGB, RGBA).
    path = tmp_path / "deep.png"
    _png16(path, colour_type, channels, _gradient())
    row = _greyscale_row(path)
    assert (row[0], row[-1]) == (0, 255) and (np.diff(row) > 0).all()


def test_validation_records_the_original_16_bit_mode(tmp_path):
    path = tmp_path / "a/deep.png"
    path.parent.mkdir()
    Image.frombytes("I;16", (64, 4), _gradient().astype("<u2").tobytes()).save(path)
    images, _ = validate_images(make_manifest(["a/deep.png"], [0], ["apple"]), tmp_path)
    assert images["mode"].tolist() == ["I;16"]
    assert (images["width"][0], images["height"][0]) == (64, 4)


def test_image_files_lists_visible_files_and_broken_links_but_never_a_fifo(tmp_path, make_image):
    make_image(tmp_path / "b.jpg")
    make_image(tmp_path / "a" / "z.jpg")
    make_image(tmp_path / "a-b.jpg")  # '-' sorts before '/': listed before a/z.jpg
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    make_image(tmp_path / ".thumbs" / "t.jpg")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "b.jpg")
    (tmp_path / "linked").symlink_to(tmp_path / "a", target_is_directory=True)
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "pipe.jpg").symlink_to(tmp_path / "pipe")
    listed = [p.relative_to(tmp_path).as_posix() for p in image_files(tmp_path)]
    assert listed == ["a-b.jpg", "a/z.jpg", "b.jpg", "gone.jpg", "link.jpg", "notes.txt"]
    assert check_image(tmp_path / "gone.jpg").reason == "file not found"
