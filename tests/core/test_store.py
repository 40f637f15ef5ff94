"""The content-addressed embedding store: images already encoded are read back, never
encoded again; another model or precision never reuses them; a reader never sees a
partial shard."""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.numpy import save

from clip_lora_pipeline.core import store as store_module
from clip_lora_pipeline.core.embed import encode_images
from clip_lora_pipeline.core.model_id import ModelSpec, model_slug
from clip_lora_pipeline.core.models import TINY_MODEL, load_model
from clip_lora_pipeline.core.store import (
    EmbeddingStore,
    cached_embeddings,
    encoding_description,
    encoding_namespace,
    file_hashes,
)
from tests.conftest import write_image
from tests.core.tiny import assert_close


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelSpec(TINY_MODEL))


@pytest.fixture
def counted(tiny, monkeypatch):
    """The images the model encodes, counted."""
    count = [0]
    encode_image = tiny.model.encode_image

    def counting(images, *args, **kwargs):
        count[0] += len(images)
        return encode_image(images, *args, **kwargs)

    monkeypatch.setattr(tiny.model, "encode_image", counting)
    return count


def _images(root, n, first_seed=0):
    return [write_image(root / f"img_{first_seed + i}.png", seed=first_seed + i).name
            for i in range(n)]


def _store(tiny, root, dtype=torch.float32, slug=None) -> EmbeddingStore:
    args = (tiny.preprocess, dtype, tiny.device.type)
    return EmbeddingStore(root / "store", encoding_namespace(slug or model_slug(tiny.spec),
                                                             *args),
                          encoding_description(*args))


def _fresh(tiny, images, paths, dtype=torch.float32):
    return encode_images(tiny.model, pd.DataFrame({"path": paths}), images,
                         tiny.preprocess, tiny.device, dtype=dtype, batch_size=4,
                         num_workers=0)


def _cached(tiny, store, images, paths, dtype=torch.float32, chunk_rows=3, encode=None):
    manifest = pd.DataFrame({"path": paths})
    encode = encode or (lambda rows: _fresh(tiny, images, manifest["path"].iloc[rows], dtype))
    return cached_embeddings(store, file_hashes([images / p for p in paths]), encode,
                             chunk_rows=chunk_rows)


def test_file_hashes_are_the_content_sha256_in_order(tmp_path):
    paths = [write_image(tmp_path / f"{i}.png", seed=i) for i in range(5)]
    expected = [hashlib.sha256(p.read_bytes()).hexdigest()[:32] for p in paths]
    assert file_hashes(paths, threads=3) == expected


def test_only_new_images_are_encoded_and_rows_equal_a_fresh_encode(tiny, counted, tmp_path):
    images = tmp_path / "images"
    first, more = _images(images, 5), _images(images, 3, first_seed=5)
    store = _store(tiny, tmp_path)

    def encoded(paths):
        """The store's rows, and the images encoded to give them."""
        counted[0] = 0
        rows = _cached(tiny, store, images, paths)
        return rows, counted[0]

    rows, n_encoded = encoded(first)
    assert n_encoded == 5 and len(store) == 5 and len(store.shards()) == 2  # chunks of 3
    assert_close(rows, _fresh(tiny, images, first))
    # A new split in another order, with three new images: only those are encoded.
    paths = more[:2] + first[::-1] + more[2:]
    rows, n_encoded = encoded(paths)
    assert n_encoded == 3
    assert_close(rows, _fresh(tiny, images, paths))
    rows, n_encoded = encoded(first[1:3])
    assert n_encoded == 0
    assert_close(rows, _fresh(tiny, images, first[1:3]))
    # The store keeps the encoder's float32 rows exactly.
    found, rows = store.lookup(file_hashes([images / p for p in paths]))
    assert found.all() and rows.dtype == np.float32


def test_another_model_or_precision_never_reuses_entries(tiny, counted, tmp_path):
    images = tmp_path / "images"
    paths = _images(images, 4)
    _cached(tiny, _store(tiny, tmp_path), images, paths)
    other_model = _store(tiny, tmp_path, slug="ViT-B-32__openai")
    bf16 = _store(tiny, tmp_path, dtype=torch.bfloat16)
    assert len({other_model.folder, bf16.folder, _store(tiny, tmp_path).folder}) == 3
    hashes = file_hashes([images / p for p in paths])
    assert not other_model.lookup(hashes)[0].any() and not bf16.lookup(hashes)[0].any()
    counted[0] = 0
    rows = _cached(tiny, bf16, images, paths, dtype=torch.bfloat16)
    assert counted[0] == 4
    assert_close(rows, _fresh(tiny, images, paths, dtype=torch.bfloat16))
    # The namespace is the same in every process: no object addresses in it.
    assert "0x" not in encoding_description(tiny.preprocess, torch.float32, "cpu")


def test_a_file_under_two_paths_is_encoded_once(tiny, counted, tmp_path):
    images = tmp_path / "images"
    paths = _images(images, 3)
    (images / "copy").mkdir()
    shutil.copy(images / paths[1], images / "copy" / "same.png")
    paths.append("copy/same.png")
    counted[0] = 0
    rows = _cached(tiny, _store(tiny, tmp_path), images, paths)
    assert counted[0] == 3
    np.testing.assert_array_equal(rows[1], rows[3])
    assert_close(rows, _fresh(tiny, images, paths))


def test_an_interrupted_encoding_keeps_its_finished_chunks(tiny, counted, tmp_path):
    images = tmp_path / "images"
    paths = _images(images, 7)
    store = _store(tiny, tmp_path)
    calls = []

    def killed_after_one_chunk(rows):
        if calls:
            raise KeyboardInterrupt
        calls.append(rows)
        return _fresh(tiny, images, [paths[i] for i in rows])

    with pytest.raises(KeyboardInterrupt):
        _cached(tiny, store, images, paths, encode=killed_after_one_chunk)
    assert len(store) == 3
    counted[0] = 0
    rows = _cached(tiny, store, images, paths)
    assert counted[0] == 4  # the four the killed run had not finished
    assert_close(rows, _fresh(tiny, images, paths))


def _rows(indices, dim=8):
    return np.repeat(np.asarray(indices, dtype=np.float32)[:, None], dim, axis=1)


def _hashes(n):
    return [hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(n)]


def test_partial_shards_and_staging_files_are_ignored(tmp_path, caplog):
    store = EmbeddingStore(tmp_path, "space")
    hashes = _hashes(4)
    store.add(hashes[:2], _rows([0, 1]))
    (real,) = store.shards()
    # What a killed writer leaves: a staging file, a staging folder; and a shard cut short
    # (a disk that filled, a copy interrupted).
    (store.folder / f".{real.name}.partial-123").write_bytes(real.read_bytes()[:100])
    (store.folder / ".space-tmpabc").mkdir()
    (store.folder / ".space-tmpabc" / real.name).write_bytes(b"")
    cut = store.folder / real.name.replace(real.name[:4], "ffff")
    cut.write_bytes(real.read_bytes()[:-10])
    assert store.shards() == sorted([real, cut])
    with caplog.at_level(logging.WARNING):
        found, rows = store.lookup(hashes)
    assert found.tolist() == [True, True, False, False]
    np.testing.assert_array_equal(rows[:2], _rows([0, 1]))
    assert "skipping unreadable shard" in caplog.text
    store.add(hashes[2:], _rows([2, 3]))
    assert store.lookup(hashes)[0].all()


def test_lookup_add_and_compaction(tmp_path):
    store = EmbeddingStore(tmp_path, "space", shard_rows=4)
    hashes = _hashes(40)
    assert store.lookup(hashes[:3])[1] is None and not store.lookup([])[0].size
    store.add(hashes[:3] + hashes[:1], _rows([0, 1, 2, 0]))  # a duplicate stored once
    assert len(store) == 3
    for i in range(3, 40, 2):  # small shards: merged once there are more than 16
        store.add(hashes[i:i + 2], _rows(range(i, min(i + 2, 40))))
    assert len(store.shards()) <= 16 + 10 and len(store) == 40
    found, rows = store.lookup(hashes[::-1] + hashes[:1])
    assert found.all()
    np.testing.assert_array_equal(rows, _rows([*range(39, -1, -1), 0]))


def test_concurrent_readers_never_see_partial_shards(tmp_path, monkeypatch, caplog):
    def slow_save(tensors, path):
        """Shards written in pieces, slowly: a reader would see them half-written."""
        data = save(tensors)
        with open(path, "wb") as handle:
            for start in range(0, len(data), 1 << 15):
                handle.write(data[start:start + (1 << 15)])
                handle.flush()
                time.sleep(0.001)

    monkeypatch.setattr(store_module, "save_file", slow_save)
    n, dim = 3000, 256
    store = EmbeddingStore(tmp_path, "space", shard_rows=512)
    hashes = _hashes(n)
    stop, errors = threading.Event(), []

    def read():
        seen = 0
        try:
            while not stop.is_set():
                found, rows = EmbeddingStore(tmp_path, "space").lookup(hashes)
                assert found.sum() >= seen  # a compaction never hides a row
                seen = int(found.sum())
                if seen:
                    np.testing.assert_array_equal(rows[found],
                                                  _rows(np.flatnonzero(found), dim))
                    assert not rows[~found].any()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        for start in range(0, n, 100):  # 30 small shards: compactions happen meanwhile
            store.add(hashes[start:start + 100], _rows(range(start, start + 100), dim))
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert not errors, errors[0]
    assert "skipping unreadable shard" not in caplog.text
    found, rows = store.lookup(hashes)
    assert found.all()
    np.testing.assert_array_equal(rows, _rows(range(n), dim))
