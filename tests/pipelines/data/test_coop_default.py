"""The default configuration runs flowers102 on CoOp's split: base parameters, a
fixture in the real Flowers layout with its split_zhou_OxfordFlowers.json, 16 shots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from scipy.io import savemat

from clip_lora_pipeline.core.cells import Cell
from clip_lora_pipeline.core.download import DownloadError
from clip_lora_pipeline.datasets import ParquetDataset
from clip_lora_pipeline.pipelines.data.nodes import download
from clip_lora_pipeline.pipelines.data.pipeline import for_cell, for_dataset
from tests.conftest import PROJECT_ROOT, write_image

CLASSES = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
PER_CLASS = {"train": 18, "val": 5, "test": 4}


@pytest.fixture(scope="module")
def base_params() -> dict:
    loader = OmegaConfigLoader(conf_source=str(PROJECT_ROOT / "conf"), base_env="base",
                               default_run_env="base")
    return loader["parameters"]


def make_flowers_with_coop_split(root: Path) -> dict[str, list]:
    """Flowers' published files (jpg/, imagelabels.mat, setid.mat) and CoOp's split
    file over them; image 1 is on disk but in no split list."""
    split: dict[str, list] = {name: [] for name in PER_CLASS}
    number = 1
    labels = [1]
    for label, class_name in enumerate(CLASSES):
        for name, count in PER_CLASS.items():
            for _ in range(count):
                number += 1
                split[name].append([f"image_{number:05d}.jpg", label, class_name])
                labels.append(label + 1)
    for i in range(1, number + 1):
        write_image(root / "jpg" / f"image_{i:05d}.jpg", size=(8, 8), seed=i)
    savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    ids = np.array([[1]], dtype=np.uint16)
    savemat(root / "setid.mat", {"trnid": ids, "valid": ids, "tstid": ids})
    (root / "split_zhou_OxfordFlowers.json").write_text(json.dumps(split))
    return split


def test_base_flowers102_runs_on_coop_split_at_16_shots(tmp_path, base_params):
    split = make_flowers_with_coop_split(tmp_path / "flowers102")
    entry = base_params["dataset_configs"]["flowers102"]
    assert "protocol" not in entry and "split_file" not in entry  # CoOp's is the default
    cell = Cell(16, base_params["few_shot_seed"])
    params = {
        "params:dataset_configs.flowers102": {**entry, "root": str(tmp_path / "flowers102")},
        **{f"params:{k}": base_params[k] for k in ("download", "split", "val_shots")},
        # the validation cache under tmp_path, not the project's data/
        "params:validation": {**base_params["validation"], "cache": str(tmp_path / "cache")},
    }
    outputs = ["manifest", "train_pool", "val_pool", "test", f"{cell.name}.train",
               f"{cell.name}.val"]
    # Files, not MemoryDatasets: the runner releases those once no node needs them.
    catalog = DataCatalog({
        **{k: MemoryDataset(v) for k, v in params.items()},
        **{f"flowers102.{o}": ParquetDataset(filepath=str(tmp_path / "out" / f"{o}.parquet"))
           for o in outputs},
    })
    SequentialRunner().run(for_dataset("flowers102") + for_cell("flowers102", cell), catalog)
    out = {o.rsplit(".", 1)[-1]: catalog.load(f"flowers102.{o}") for o in outputs}

    listed = {(f"jpg/{rel}", label, name, s) for s, entries in split.items()
              for rel, label, name in entries}
    manifest = out["manifest"]
    assert set(zip(manifest["path"], manifest["label"], manifest["class_name"],
                   manifest["source_split"])) == listed
    for name, pool in (("train", "train_pool"), ("val", "val_pool"), ("test", "test")):
        assert set(out[pool]["path"]) == {f"jpg/{rel}" for rel, _, _ in split[name]}
    assert out["train"].groupby("class_name").size().to_dict() == dict.fromkeys(CLASSES, 16)
    assert out["val"].groupby("class_name").size().to_dict() == dict.fromkeys(CLASSES, 4)
    assert set(out["train"]["path"]) <= set(out["train_pool"]["path"])
    assert set(out["val"]["path"]) <= set(out["val_pool"]["path"])


def test_missing_split_file_offline_names_it_and_where_it_goes(tmp_path, base_params):
    make_flowers_with_coop_split(tmp_path)
    (tmp_path / "split_zhou_OxfordFlowers.json").unlink()
    entry = {**base_params["dataset_configs"]["flowers102"], "root": str(tmp_path)}
    with pytest.raises(DownloadError) as err:
        download(entry, {"timeout": 2})
    message = str(err.value)
    assert "https://drive.google.com/file/d/1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT/view" in message
    assert f"place it at {tmp_path / 'split_zhou_OxfordFlowers.json'}" in message
    assert not list(tmp_path.glob("*.part"))
