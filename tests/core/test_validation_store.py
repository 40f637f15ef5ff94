"""The validation cache: a file already checked (its content, whatever its path) is read
back, never decoded again; the tables are those of an uncached validation; a changed
file, a changed version of the checks or a file rewritten while checked is checked
again."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from clip_lora_pipeline.core import images as images_module
from clip_lora_pipeline.core import validation_store
from clip_lora_pipeline.core.images import BadImagesError, image_files, validate_images
from clip_lora_pipeline.core.manifest import make_manifest
from clip_lora_pipeline.core.validation_store import ValidationStore
from tests.conftest import write_image


@pytest.fixture
def checked(monkeypatch):
    """The paths ``check_image`` decodes, in the order asked."""
    seen = []
    check_image = images_module.check_image

    def counting(path):
        seen.append(path.name)
        return check_image(path)

    monkeypatch.setattr(images_module, "check_image", counting)
    return seen


def _folder(root, n, first=0):
    """``n`` small JPEGs in two classes, and one corrupt file in class a."""
    for i in range(first, first + n):
        write_image(root / ("a" if i % 2 else "b") / f"img_{i}.jpg", seed=i, fmt="JPEG")
    (root / "a/corrupt.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 40)
    return _manifest(root)


def _manifest(root):
    paths = [p.relative_to(root).as_posix() for p in image_files(root)]
    return make_manifest(paths, [0 if p.startswith("a/") else 1 for p in paths],
                         ["apple", "banana"])


def test_a_second_validation_checks_nothing_and_new_files_only_are_checked(
        tmp_path, checked, caplog):
    root, cache = tmp_path / "raw", tmp_path / "cache"
    manifest = _folder(root, 6)
    caplog.set_level(logging.INFO, logger="clip_lora_pipeline.core.images")
    validate_images(manifest, root, cache=cache)
    assert len(checked) == 7
    checked.clear()
    images, rejected = validate_images(manifest, root, cache=cache)
    assert checked == []
    assert len(images) == 6 and rejected["path"].tolist() == ["a/corrupt.jpg"]
    assert "validate: 0 of 7 images checked, 7 read back from the validation cache" \
        in caplog.text
    manifest = _folder(root, 3, first=6)
    images, _ = validate_images(manifest, root, cache=cache)
    assert sorted(checked) == ["img_6.jpg", "img_7.jpg", "img_8.jpg"]
    assert len(images) == 9
    assert "validate: 3 of 10 images checked, 7 read back" in caplog.text


def _messy(root):
    """Every kind of result: modes, sizes, each rejection, and one content twice."""
    write_image(root / "a/rgb.jpg", size=(30, 20))
    write_image(root / "a/grey.png", mode="L", size=(16, 12))
    write_image(root / "a/cmyk.jpg", mode="CMYK", size=(10, 8))
    write_image(root / "a/copy_of_rgb.jpg", size=(30, 20))
    write_image(root / "b/rgba.png", mode="RGBA")
    (root / "b/empty.jpg").write_bytes(b"")
    (root / "b/notes.txt").write_text("not an image")
    full = write_image(root / "b/whole.jpg", size=(64, 64)).read_bytes()
    (root / "b/truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "b/missing.jpg").symlink_to(root / "nowhere.jpg")
    return _manifest(root)


def test_tables_are_identical_with_and_without_the_cache(tmp_path):
    root = tmp_path / "raw"
    manifest = _messy(root)
    assert "b/missing.jpg" in set(manifest["path"])
    plain = validate_images(manifest, root, num_workers=2)
    first = validate_images(manifest, root, num_workers=2, cache=tmp_path / "cache")
    again = validate_images(manifest, root, num_workers=2, cache=tmp_path / "cache")
    for tables in (first, again):
        for cached, expected in zip(tables, plain):
            pd.testing.assert_frame_equal(cached, expected)
    assert set(plain[1]["path"]) == {"b/empty.jpg", "b/notes.txt", "b/truncated.jpg",
                                     "b/missing.jpg"}


def test_rejections_stop_the_run_as_without_the_cache(tmp_path):
    root = tmp_path / "raw"
    manifest = _messy(root)
    lost = manifest[manifest["path"].isin(["a/rgb.jpg", "b/empty.jpg", "b/notes.txt"])]
    for rows, policy in ((manifest, "fail"), (lost, "skip")):
        errors = []
        for cache in (None, tmp_path / "cache", tmp_path / "cache"):  # none, new, read back
            with pytest.raises(BadImagesError) as raised:
                validate_images(rows, root, on_bad_image=policy, cache=cache)
            errors.append(raised.value)
        assert len({str(error) for error in errors}) == 1
        for error in errors[1:]:
            pd.testing.assert_frame_equal(error.rejected, errors[0].rejected)
    assert "no readable image left" in str(errors[0])


def test_a_file_whose_content_changes_is_checked_again(tmp_path, checked):
    root, cache = tmp_path / "raw", tmp_path / "cache"
    manifest = _folder(root, 4)
    validate_images(manifest, root, cache=cache)
    checked.clear()
    (root / "a/img_1.jpg").write_bytes(b"\xff\xd8\xff" + b"\x01" * 40)  # now corrupt
    write_image(root / "b/img_0.jpg", size=(40, 10), seed=99, fmt="JPEG")
    images, rejected = validate_images(manifest, root, cache=cache)
    assert sorted(checked) == ["img_0.jpg", "img_1.jpg"]
    assert set(rejected["path"]) == {"a/corrupt.jpg", "a/img_1.jpg"}
    row = images.set_index("path").loc["b/img_0.jpg"]
    assert (row["width"], row["height"]) == (40, 10)


def test_unreadable_files_are_checked_every_time(tmp_path, checked):
    root, cache = tmp_path / "raw", tmp_path / "cache"
    _folder(root, 2)
    (root / "b/gone.jpg").symlink_to(root / "nowhere.jpg")
    manifest = _manifest(root)
    validate_images(manifest, root, cache=cache)
    checked.clear()
    _, rejected = validate_images(manifest, root, cache=cache)
    assert checked == ["gone.jpg"]
    assert rejected.set_index("path").loc["b/gone.jpg", "reason"] == "file not found"


def test_no_cache_checks_everything_every_time(tmp_path, checked):
    root = tmp_path / "raw"
    manifest = _folder(root, 4)
    for _ in range(2):
        checked.clear()
        images, rejected = validate_images(manifest, root, cache=None)
        assert len(checked) == 5 and len(images) == 4 and len(rejected) == 1
    assert not (tmp_path / "cache").exists()


def test_another_version_of_the_checks_checks_again(tmp_path, checked, monkeypatch):
    root, cache = tmp_path / "raw", tmp_path / "cache"
    manifest = _folder(root, 4)
    validate_images(manifest, root, cache=cache)
    monkeypatch.setattr(validation_store, "CHECKS_VERSION", validation_store.CHECKS_VERSION + 1)
    checked.clear()
    validate_images(manifest, root, cache=cache)
    assert len(checked) == 5
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2


def test_a_file_rewritten_while_checked_is_not_stored(tmp_path, checked, monkeypatch):
    root, cache = tmp_path / "raw", tmp_path / "cache"
    manifest = _folder(root, 4)
    target = root / "a/img_1.jpg"
    original = target.read_bytes()
    counting = images_module.check_image

    def rewriting(path):  # another process replaces img_1.jpg as it is hashed, then decoded
        if path == target:
            path.write_bytes(b"garbage")
        return counting(path)

    monkeypatch.setattr(images_module, "check_image", rewriting)
    _, rejected = validate_images(manifest, root, cache=cache)
    assert "a/img_1.jpg" in set(rejected["path"])
    monkeypatch.setattr(images_module, "check_image", counting)
    target.write_bytes(original)  # the hash of the first read: its result was not stored
    checked.clear()
    images, _ = validate_images(manifest, root, cache=cache)
    assert checked == ["img_1.jpg"]
    assert "a/img_1.jpg" in set(images["path"])


def test_small_shards_are_merged_and_every_record_is_kept(tmp_path):
    store = ValidationStore(tmp_path / "cache", description="test", shard_rows=4)
    hashes = [f"{i:032x}" for i in range(30)]
    for i in range(30):
        store.add([hashes[i]], [{"width": i, "height": 1, "mode": "L", "reason": None}])
        assert len(store.shards()) <= 16 + (i + 1) // 4  # small ones, and full ones
    records = store.lookup([*hashes, None, "f" * 32])
    assert [r["width"] for r in records[:30]] == list(range(30))
    assert records[30:] == [None, None]


def test_an_unreadable_shard_is_skipped(tmp_path, caplog):
    store = ValidationStore(tmp_path / "cache", description="test")
    store.add(["a" * 32], [{"width": None, "height": None, "mode": None, "reason": "x"}])
    (store.folder / "0-1-abcdef01.parquet").write_bytes(b"not parquet")
    assert store.lookup(["a" * 32]) == [
        {"width": None, "height": None, "mode": None, "reason": "x"}]
    assert "skipping unreadable shard" in caplog.text
