"""Incremental data: 10% new images added to an ``image_folder`` dataset are encoded, and
nothing else is, and no existing image changes split (issue 14).

The data nodes (download, validate, split) and the encoding node run twice on the same
folder and embedding store, as two ``kedro run`` would: before and after the images are
added. Each image's split follows from its path and the seed alone, so the existing
images stay where they were, and the store already holds their embeddings."""

from __future__ import annotations

import zlib

import numpy as np

from clip_lora_pipeline.core.models import TINY_MODEL, register_model_configs
from clip_lora_pipeline.pipelines.data.nodes import download, split, validate
from clip_lora_pipeline.pipelines.zero_shot import nodes
from tests.conftest import write_image

MODEL = {"name": TINY_MODEL, "pretrained": None, "checkpoint": None}
RUNTIME = {"device": "cpu", "precision": "auto", "batch_size": 32, "num_workers": 0}
SPLIT = {"seed": 0, "fractions": {"train": 0.6, "val": 0.2, "test": 0.2},
         "val_fraction_of_train": 0.2}
SPLITS = ("train", "val", "test")
CLASSES = ("cat", "dog", "fox", "owl")
PER_CLASS = 40  # 160 images; 16 more are added (10%)


def _add_images(root, names) -> list[str]:
    """Write each image with its own content (seeded by its path): the embedding store
    finds images by content, so copies would be read back, not encoded."""
    for path in names:
        write_image(root / path, seed=zlib.crc32(path.encode()))
    return list(names)


def _run(dataset, store, encoded: list[str]):
    """The data nodes, then the encoding node on each split: the splits, their embedding
    tables and the paths the model was given, per split."""
    images, rejected = validate(download(dataset, {}), dataset, {"num_workers": 2})
    assert rejected.empty
    parts = dict(zip(SPLITS, split(images, SPLIT), strict=True))
    tables, given = {}, {}
    for name, frame in parts.items():
        encoded.clear()
        tables[name] = nodes.encode_test(frame, dataset, MODEL, RUNTIME, store)
        given[name] = sorted(encoded)
    return parts, tables, given


def test_adding_10_percent_images_encodes_only_them_and_moves_no_image(tmp_path,
                                                                        monkeypatch):
    register_model_configs()
    root = tmp_path / "photos"
    dataset = {"source": "image_folder", "root": str(root)}
    store = str(tmp_path / "store")
    old = _add_images(root, [f"{c}/{i:03d}.png" for c in CLASSES for i in range(PER_CLASS)])

    encoded: list[str] = []
    encode_images = nodes.encode_images

    def counting(model, manifest, *args, **kwargs):
        encoded.extend(manifest["path"])
        return encode_images(model, manifest, *args, **kwargs)

    monkeypatch.setattr(nodes, "encode_images", counting)
    before, first_tables, first = _run(dataset, store, encoded)
    # the first run encodes every image once
    for name in SPLITS:
        assert first[name] == sorted(before[name]["path"]), name
    assert sum(map(len, first.values())) == len(old)

    # 10% more: 4 per class, with names that sort between the existing ones
    new = _add_images(root, [f"{c}/{i:03d}_new.png" for c in CLASSES
                             for i in range(0, PER_CLASS, PER_CLASS // 4)])
    assert len(new) == len(old) // 10
    after, second_tables, second = _run(dataset, store, encoded)

    split_before = {p: name for name, frame in before.items() for p in frame["path"]}
    split_after = {p: name for name, frame in after.items() for p in frame["path"]}
    assert set(split_after) == set(old) | set(new)
    # no existing image changed split
    assert {p: split_after[p] for p in old} == split_before
    # the second encoding of each split gave the model exactly that split's new images
    for name in SPLITS:
        new_here = sorted(p for p in new if split_after[p] == name)
        assert second[name] == new_here, name
        assert len(second[name]) == len(new_here)
    assert sum(map(len, second.values())) == len(new)
    assert all(second.values())  # every split got some of the new images (seed 0)
    # and the existing images' embeddings were read back unchanged
    for name in SPLITS:
        table = second_tables[name].set_index("path")
        reference = first_tables[name].set_index("path")
        np.testing.assert_allclose(np.stack(table.loc[reference.index, "embedding"]),
                                   np.stack(reference["embedding"]), rtol=1e-6, atol=1e-7)
