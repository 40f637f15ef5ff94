"""The namespaced data pipeline, run with SequentialRunner."""

from __future__ import annotations

import pandas as pd
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from clip_lora_pipeline.datasets import ParquetDataset
from clip_lora_pipeline.pipelines.data.pipeline import for_dataset

OUTPUTS = ("manifest", "images", "rejected_images", "train_pool", "val_pool", "test",
           "train", "val")


def _run(workdir, shots=4, seed=1) -> dict[str, pd.DataFrame]:
    params = {
        "params:dataset_configs.shapes": {
            "source": "synthetic",
            "root": str(workdir / "images"),
            "options": {"num_classes": 5, "images_per_class": 20, "image_size": 32},
        },
        "params:download": {"timeout": 5},
        "params:validation": {"on_bad_image": "skip", "num_workers": 2},
        "params:split": {"seed": 0, "fractions": {"train": 0.6, "val": 0.2, "test": 0.2},
                         "val_fraction_of_train": 0.2},
        "params:shots": shots,
        "params:val_shots": None,
        "params:few_shot_seed": seed,
    }
    datasets = {name: MemoryDataset(value) for name, value in params.items()}
    for output in OUTPUTS:
        path = workdir / f"shots{shots}_seed{seed}" / f"{output}.parquet"
        datasets[f"shapes.{output}"] = ParquetDataset(filepath=str(path))
    catalog = DataCatalog(datasets)
    SequentialRunner().run(for_dataset("shapes"), catalog)
    return {name: catalog.load(f"shapes.{name}") for name in ("train", "val", "test")}


def test_pipeline_nodes_are_namespaced():
    pipeline = for_dataset("shapes")
    assert {n.name for n in pipeline.nodes} == {
        "shapes.download", "shapes.validate", "shapes.split", "shapes.few_shot"
    }
    assert "params:dataset_configs.shapes" in pipeline.inputs()
    assert "params:shots" in pipeline.inputs()


def test_pipeline_runs_and_is_reproducible(tmp_path):
    first = _run(tmp_path / "a")
    second = _run(tmp_path / "b")
    for name in first:
        pd.testing.assert_frame_equal(first[name], second[name])
    assert first["train"].groupby("label").size().tolist() == [4] * 5
    assert len(first["test"]) == 20
    paths = [set(first[n]["path"]) for n in first]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])


def test_other_seed_gives_other_sample(tmp_path):
    first = _run(tmp_path, seed=1)
    other = _run(tmp_path, seed=2)
    assert set(first["train"]["path"]) != set(other["train"]["path"])
    pd.testing.assert_frame_equal(first["test"], other["test"])
