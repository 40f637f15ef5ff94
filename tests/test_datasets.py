"""Catalog datasets write atomically: an interrupted save leaves no file behind."""

from __future__ import annotations

import pandas as pd
import pytest
from kedro.io.core import DatasetError

from clip_lora_pipeline.datasets import JSONDataset, ParquetDataset


def test_parquet_round_trip_leaves_only_the_final_file(tmp_path):
    dataset = ParquetDataset(filepath=str(tmp_path / "sub" / "table.parquet"))
    frame = pd.DataFrame({"path": ["a.png", "b.png"], "label": [0, 1]})
    dataset.save(frame)
    pd.testing.assert_frame_equal(dataset.load(), frame)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["table.parquet"]


def test_interrupted_save_keeps_the_previous_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "table.parquet"
    dataset = ParquetDataset(filepath=str(target))
    old = pd.DataFrame({"x": [1, 2, 3]})
    dataset.save(old)

    def dies_halfway(self, handle, **kwargs):
        handle.write(b"PAR1 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", dies_halfway)
    with pytest.raises((KeyboardInterrupt, DatasetError)):
        dataset.save(pd.DataFrame({"x": [9]}))
    monkeypatch.undo()
    pd.testing.assert_frame_equal(ParquetDataset(filepath=str(target)).load(), old)
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


def test_interrupted_first_save_leaves_nothing(tmp_path, monkeypatch):
    dataset = JSONDataset(filepath=str(tmp_path / "metrics.json"))

    def dies(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr("json.dump", dies)
    with pytest.raises((RuntimeError, DatasetError)):
        dataset.save({"top1": 0.5})
    assert list(tmp_path.iterdir()) == []
    assert not dataset.exists()


def test_figure_dataset_saves_a_png_and_loads_its_bytes(tmp_path):
    from matplotlib.figure import Figure

    from clip_lora_pipeline.datasets import FigureDataset

    figure = Figure(figsize=(2, 2))
    figure.add_subplot().plot([0, 1], [1, 0])
    dataset = FigureDataset(filepath=str(tmp_path / "plots" / "curve.png"))
    dataset.save(figure)
    png = dataset.load()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["curve.png"]
    assert dataset.preview() == __import__("base64").b64encode(png).decode()


def test_interrupted_figure_save_leaves_nothing(tmp_path, monkeypatch):
    import io
    import types

    from matplotlib.figure import Figure

    from clip_lora_pipeline.datasets import FigureDataset

    class DiesWhileWriting(io.BytesIO):
        # getvalue() runs after the target file was opened for writing
        def getvalue(self):
            raise KeyboardInterrupt

    monkeypatch.setattr("kedro_datasets.matplotlib.matplotlib_dataset.io",
                        types.SimpleNamespace(BytesIO=DiesWhileWriting))
    with pytest.raises((KeyboardInterrupt, DatasetError)):
        FigureDataset(filepath=str(tmp_path / "curve.png")).save(Figure())
    assert list(tmp_path.iterdir()) == []


def test_text_dataset_round_trip_is_atomic(tmp_path):
    from clip_lora_pipeline.datasets import TextDataset

    dataset = TextDataset(filepath=str(tmp_path / "report.html"))
    dataset.save("<p>hello</p>")
    assert dataset.load() == "<p>hello</p>"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_parquet_preview_of_vector_columns_is_json_for_kedro_viz(tmp_path):
    import json

    import numpy as np

    dataset = ParquetDataset(filepath=str(tmp_path / "embeddings.parquet"))
    dataset.save(pd.DataFrame({"path": ["a.png"], "label": [np.int64(3)],
                               "embedding": [np.arange(8, dtype=np.float32) / 3]}))
    preview = dataset.preview()
    json.dumps(preview)  # kedro-viz fails on numpy arrays here
    assert preview["data"][0] == ["a.png", 3, "[0, 0.3333, 0.6667, 1, 1.333, …] (8)"]


def test_safetensors_round_trip_and_interrupted_save_keeps_the_previous_file(
    tmp_path, monkeypatch,
):
    import safetensors.torch
    import torch

    from clip_lora_pipeline.datasets import SafetensorsDataset

    dataset = SafetensorsDataset(str(tmp_path / "adapter.safetensors"))
    dataset.save({"tensors": {"w": torch.ones(2)}, "config": {"name": "lora"}})

    def dies_halfway(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half a header")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        dataset.save({"tensors": {"w": torch.zeros(2)}, "config": {}})
    monkeypatch.undo()
    stored = dataset.load()
    assert stored["config"] == {"name": "lora"} and stored["tensors"]["w"].tolist() == [1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter.safetensors"]


def test_every_type_round_trips_on_a_remote_filesystem(remote_root):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from clip_lora_pipeline.core import storage
    from clip_lora_pipeline.datasets import (
        CSVDataset,
        FigureDataset,
        SafetensorsDataset,
        TextDataset,
    )

    frame = pd.DataFrame({"path": ["a.png", "b.png"], "label": [0, 1]})
    for kind, name, data in ((ParquetDataset, "t.parquet", frame), (JSONDataset, "m.json", {"a": 1}),
                             (TextDataset, "r.html", "<p>r</p>")):
        dataset = kind(filepath=f"{remote_root}/sub/{name}")
        assert not dataset.exists()
        dataset.save(data)
        loaded = dataset.load()
        assert loaded.equals(data) if isinstance(data, pd.DataFrame) else loaded == data
    CSVDataset(filepath=f"{remote_root}/sub/t.csv", save_args={"index": False}).save(frame)
    figure = FigureDataset(filepath=f"{remote_root}/sub/f.png")
    figure.save(plt.figure())
    assert figure.load().startswith(b"\x89PNG")
    tensors = SafetensorsDataset(f"{remote_root}/sub/a.safetensors")
    tensors.save({"tensors": {"w": torch.ones(2)}, "config": {"name": "lora"}})
    assert tensors.exists() and tensors.load()["config"] == {"name": "lora"}
    assert storage.listdir(f"{remote_root}/sub") == [
        "a.safetensors", "f.png", "m.json", "r.html", "t.csv", "t.parquet"]


def test_an_interrupted_remote_save_keeps_the_previous_object(remote_root, monkeypatch):
    # fsspec's remote files upload what was written when they close, an error included:
    # without the local staging, half a file would replace the table
    dataset = ParquetDataset(filepath=f"{remote_root}/table.parquet")
    old = pd.DataFrame({"x": [1, 2, 3]})
    dataset.save(old)

    def dies_halfway(self, handle, **kwargs):
        handle.write(b"PAR1 half a file")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises((KeyboardInterrupt, DatasetError)):
        patch.setattr(pd.DataFrame, "to_parquet", dies_halfway)
        dataset.save(pd.DataFrame({"x": [9]}))
    pd.testing.assert_frame_equal(ParquetDataset(filepath=f"{remote_root}/table.parquet").load(),
                                  old)
