"""The namespaced data pipeline, run with SequentialRunner."""

from __future__ import annotations

import pandas as pd
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from clip_lora_pipeline.core.cells import Cell
from clip_lora_pipeline.core.splits import split_dataset
from clip_lora_pipeline.datasets import ParquetDataset
from clip_lora_pipeline.pipelines.data.pipeline import for_cell, for_dataset

SPLIT = {"seed": 0, "fractions": {"train": 0.6, "val": 0.2, "test": 0.2},
         "val_fraction_of_train": 0.2}
OUTPUTS = ("manifest", "images", "rejected_images", "train_pool", "val_pool", "test",
           "train", "val")


def _run(workdir, shots=4, seed=1) -> dict[str, pd.DataFrame]:
    params = {
        "params:dataset_configs.shapes": {
            "source": "synthetic",
            "root": str(workdir / "images"),
            # 50 per class: at seed 0 the hash leaves every class >= 5 val images (4 are
            # sampled: min(shots, 4)); 20 leaves a class 2.
            "options": {"num_classes": 5, "images_per_class": 50, "image_size": 32},
        },
        "params:download": {"timeout": 5},
        "params:validation": {"on_bad_image": "skip", "num_workers": 2},
        "params:split": SPLIT,
        "params:val_shots": None,
    }
    cell = Cell(shots, seed)
    datasets = {name: MemoryDataset(value) for name, value in params.items()}
    names = {o: f"shapes.{cell.name}.{o}" if o in ("train", "val") else f"shapes.{o}"
             for o in OUTPUTS}
    for output, name in names.items():
        path = workdir / f"shots{shots}_seed{seed}" / f"{output}.parquet"
        datasets[name] = ParquetDataset(filepath=str(path))
    catalog = DataCatalog(datasets)
    SequentialRunner().run(for_dataset("shapes") + for_cell("shapes", cell), catalog)
    return {name: catalog.load(names[name]) for name in ("train", "val", "test", "images")}


def test_pipeline_nodes_are_namespaced_by_dataset_and_cell():
    pipeline = for_dataset("shapes") + for_cell("shapes", Cell(4, 2))
    assert {n.name for n in pipeline.nodes} == {
        "shapes.download", "shapes.validate", "shapes.classes", "shapes.split", "shapes.shots_4_seed_2.few_shot"
    }
    assert "params:dataset_configs.shapes" in pipeline.inputs()
    # The cell's shots and seed are fixed in its node, not read from parameters.
    assert not {"params:shots", "params:few_shot_seed"} & pipeline.inputs()
    assert pipeline.outputs() >= {"shapes.shots_4_seed_2.train", "shapes.shots_4_seed_2.val"}


def test_pipeline_runs_and_is_reproducible(tmp_path):
    first = _run(tmp_path / "a")
    second = _run(tmp_path / "b")
    for name in first:
        pd.testing.assert_frame_equal(first[name], second[name])
    assert first["train"].groupby("label").size().tolist() == [4] * 5
    # the test split is the core split's, whose size varies around 20% by chance
    expected = split_dataset(first["images"], SPLIT["fractions"], SPLIT["val_fraction_of_train"],
                             SPLIT["seed"])["test"]
    assert first["test"]["path"].tolist() == expected["path"].tolist()
    assert first["test"]["label"].nunique() == 5
    paths = [set(first[n]["path"]) for n in ("train", "val", "test")]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])


def test_other_seed_gives_other_sample(tmp_path):
    first = _run(tmp_path, seed=1)
    other = _run(tmp_path, seed=2)
    assert set(first["train"]["path"]) != set(other["train"]["path"])
    pd.testing.assert_frame_equal(first["test"], other["test"])
