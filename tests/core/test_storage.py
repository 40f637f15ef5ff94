"""Data on a filesystem other than the local one (fsspec's ``memory://``, and S3 on a
local moto server where it is installed): files and folders are written whole or not at
all, listings need no directories, and the stores, checkpoints, images and generated
dataset work there as they do locally."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clip_lora_pipeline.core import images as images_module
from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.atomic import (
    atomic_dir,
    atomic_path,
    current_dir,
    settled_dir,
)
from clip_lora_pipeline.core.checkpoints import Checkpoint, CheckpointStore
from clip_lora_pipeline.core.dataset_settings import (
    DatasetSettings,
    DatasetSettingsError,
)
from clip_lora_pipeline.core.images import image_files, load_rgb, validate_images
from clip_lora_pipeline.core.manifest import make_manifest
from clip_lora_pipeline.core.sources import get_source
from clip_lora_pipeline.core.store import EmbeddingStore, file_hash
from clip_lora_pipeline.core.validation_store import ValidationStore
from tests.conftest import write_image


def _put(root, relative: str, data: bytes) -> None:
    with atomic_path(storage.data_path(root) / relative) as staging:
        staging.write_bytes(data)


def test_local_locations_stay_plain_paths(tmp_path):
    assert type(storage.data_path("data/x")) is type(Path("data/x"))
    assert storage.data_path(f"file://{tmp_path}") == tmp_path
    assert not storage.is_remote("data/x") and not storage.is_remote(tmp_path)
    assert storage.is_remote("s3://bucket/clip") and storage.is_remote("memory:///a")
    assert storage.join("data", "a/b.png") == "data/a/b.png"
    assert storage.join("s3://bucket/clip", "a/b.png") == "s3://bucket/clip/a/b.png"
    assert storage.join("", "s3://bucket/clip/a.png") == "s3://bucket/clip/a.png"
    with storage.local_copy(tmp_path / "x") as copy:
        assert copy == tmp_path / "x"  # no copy of a local file


def test_a_file_is_put_whole_or_not_at_all(remote_root):
    final = storage.data_path(remote_root) / "sub" / "table.json"
    with atomic_path(final) as staging:
        staging.write_text("new")
        assert not final.exists()  # not before the block ends
    assert final.read_text() == "new"
    with pytest.raises(KeyboardInterrupt), atomic_path(final) as staging:
        staging.write_text("half")
        raise KeyboardInterrupt
    assert final.read_text() == "new"
    assert storage.listdir(final.parent) == ["table.json"]


def test_a_folder_is_replaced_by_its_last_complete_version(remote_root):
    final = storage.data_path(remote_root) / "last"
    assert not settled_dir(final)
    for content in ("first", "second"):
        with atomic_dir(final) as staging:
            (staging / "sub").mkdir()
            (staging / "state").write_text(content)
            (staging / "sub" / "more").write_text(content)
    assert settled_dir(final)
    assert (current_dir(final) / "state").read_text() == "second"
    assert (current_dir(final) / "sub" / "more").read_text() == "second"
    with pytest.raises(RuntimeError), atomic_dir(final) as staging:
        (staging / "state").write_text("half")
        raise RuntimeError("killed")
    assert (current_dir(final) / "state").read_text() == "second"
    assert len(storage.listdir(final)) == 2  # the pointer and one version


def test_listings_need_no_folders_and_a_rewrite_changes_the_signature(remote_root):
    root = storage.data_path(remote_root)
    assert storage.listdir(root / "nothing") == [] and storage.files_under(root) == []
    for relative in ("a/b.txt", "a/.hidden/c.txt", "d.txt"):
        _put(root, relative, b"12345")
    assert storage.listdir(root) == ["a", "d.txt"]
    assert [p.relative_to(root).as_posix() for p in storage.files_under(root)] == [
        "a/.hidden/c.txt", "a/b.txt", "d.txt"]
    before = storage.signature(root / "d.txt")
    _put(root, "d.txt", b"54321")  # the same size
    assert storage.signature(root / "d.txt") != before
    assert storage.read_bytes(storage.join(remote_root, "d.txt")) == b"54321"


def test_images_are_listed_read_and_validated_where_they_are(remote_root, tmp_path, monkeypatch):
    root = storage.data_path(remote_root) / "images"
    for i in range(4):
        local = write_image(tmp_path / f"img_{i}.png", seed=i)
        _put(root, f"{'ab'[i % 2]}/img_{i}.png", local.read_bytes())
    _put(root, "a/corrupt.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    _put(root, ".cache/skip.png", b"")
    paths = [p.relative_to(root).as_posix() for p in image_files(root)]
    assert paths == ["a/corrupt.png", "a/img_0.png", "a/img_2.png", "b/img_1.png", "b/img_3.png"]
    local_pixels = np.asarray(load_rgb(tmp_path / "img_2.png"))
    assert np.array_equal(np.asarray(load_rgb(storage.join(root, "a/img_2.png"))), local_pixels)
    assert file_hash(root / "a/img_2.png") == file_hash(tmp_path / "img_2.png")

    manifest = make_manifest(paths, [0 if p.startswith("a/") else 1 for p in paths], ["a", "b"])
    cache = storage.join(remote_root, "validation_cache")
    good, rejected = validate_images(manifest, root, cache=cache)
    assert rejected["path"].tolist() == ["a/corrupt.png"]
    assert rejected["reason"][0].startswith("truncated or corrupt image")
    assert good["width"].tolist() == [24] * 4
    checked = []
    monkeypatch.setattr(images_module, "check_image", lambda p: checked.append(p) or None)
    again, rejected_again = validate_images(manifest, root, cache=cache)  # from the cache
    assert checked == [] and again.equals(good) and rejected_again.equals(rejected)


def test_the_embedding_store_keeps_one_object_per_shard(remote_root):
    store = EmbeddingStore(remote_root, "tiny__0123", "{}", shard_rows=4)
    hashes = [f"{i:032x}" for i in range(10)]
    rows = np.random.default_rng(0).random((10, 3), dtype=np.float32)
    store.add(hashes, rows)
    assert len(store.shards()) == 3  # 4 + 4 + 2 rows
    found, got = store.lookup([*hashes[::-1], "f" * 32])
    assert found.tolist() == [True] * 10 + [False]
    np.testing.assert_array_equal(got[:10], rows[::-1])
    for i in range(3):  # small shards, then merged into full ones
        store.add([f"{100 + i:032x}"], rows[i:i + 1])
    store.compact(max_small=1)
    assert len(store) == 13 and len(store.shards()) == 4
    assert sorted(set(storage.listdir(store.folder)) - {p.name for p in store.shards()}) == [
        "namespace.json"]
    found, got = store.lookup([f"{101:032x}", hashes[9]])
    assert found.all()
    np.testing.assert_array_equal(got, rows[[1, 9]])


def test_the_validation_cache_reads_back_what_it_stored(remote_root):
    store = ValidationStore(remote_root, description='{"checks": 1}', shard_rows=3)
    records = [{"width": i, "height": 2 * i, "mode": "RGB", "reason": None} for i in range(5)]
    store.add([f"{i:032x}" for i in range(5)], records)
    assert len(store.shards()) == 2
    assert store.lookup([f"{4:032x}", None, "f" * 32]) == [records[4], None, None]
    store.add([f"{9:032x}"], [{"width": None, "height": None, "mode": None, "reason": "bad"}])
    store.compact(max_small=1)
    assert store.lookup([f"{9:032x}", f"{0:032x}"])[0]["reason"] == "bad"


def test_a_checkpoint_saved_there_loads_back(remote_root):
    store = CheckpointStore(storage.data_path(remote_root) / "checkpoints" / "run" / "last")
    assert not store.exists()
    for step in (1, 2):
        store.save(Checkpoint({"w": torch.full((2,), float(step))}, {"w": torch.zeros(2)},
                              {"step": step}), {"lr": step})
    assert store.exists() and store.settings() == {"lr": 2}
    loaded = CheckpointStore(store.folder).load()
    assert loaded.state == {"step": 2}
    assert torch.equal(loaded.trainable["w"], torch.full((2,), 2.0))


def test_the_synthetic_dataset_is_generated_and_indexed_there(remote_root):
    settings = DatasetSettings.from_params("synthetic", {
        "source": "synthetic", "root": storage.join(remote_root, "01_raw/synthetic"),
        "options": {"num_classes": 2, "images_per_class": 3, "image_size": 16}})
    source = get_source("synthetic")
    assert not source.is_prepared(settings.root, **settings.options)
    source.prepare(settings.root, **settings.options)
    assert source.is_prepared(settings.root, **settings.options)
    manifest = source.index(settings.root, **settings.options)
    assert manifest["path"].tolist() == [f"{c}/{c}_{i:04d}.png" for c in
                                         ("green_triangle", "red_circle") for i in range(3)]
    assert load_rgb(storage.join(settings.root, manifest["path"][0])).size == (16, 16)


def test_a_downloading_source_on_a_remote_root_names_the_fix():
    with pytest.raises(DatasetSettingsError, match=r"dataset_configs\.flowers102\.root .* local"):
        DatasetSettings.from_params("flowers102", {"source": "flowers102",
                                                   "root": "s3://bucket/clip/01_raw/flowers102"})
