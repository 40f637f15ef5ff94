"""The validate node reads ``validation.cache``: a rerun decodes no file already checked
and returns the tables of an uncached validation."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from clip_lora_pipeline.core import images as images_module
from clip_lora_pipeline.pipelines.data.nodes import download, validate


def test_validate_reads_back_from_the_cache_it_is_given(tmp_path, monkeypatch, caplog):
    dataset = {"source": "synthetic", "root": str(tmp_path / "synthetic"),
               "options": {"num_classes": 3, "images_per_class": 6, "image_size": 16,
                           "seed": 0}}
    manifest = download(dataset, {})
    (Path(dataset["root"]) / manifest["path"].iloc[0]).write_bytes(b"")
    calls = []
    check_image = images_module.check_image
    monkeypatch.setattr(images_module, "check_image",
                        lambda path: calls.append(path) or check_image(path))
    caplog.set_level(logging.INFO, logger="clip_lora_pipeline.core.images")
    cached = {"on_bad_image": "skip", "cache": str(tmp_path / "cache")}

    plain = validate(manifest, dataset, {"on_bad_image": "skip", "cache": None})
    first = validate(manifest, dataset, cached)
    assert len(calls) == 2 * 18
    again = validate(manifest, dataset, cached)
    assert len(calls) == 2 * 18
    assert "validate: 0 of 18 images checked, 18 read back from the validation cache " \
        f"{tmp_path / 'cache'}" in caplog.text
    for tables in (first, again):
        for table, expected in zip(tables, plain):
            pd.testing.assert_frame_equal(table, expected)
    assert len(again[1]) == 1
