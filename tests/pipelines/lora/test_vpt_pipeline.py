"""VPT through the lora pipeline (train, evaluate, export) with SequentialRunner and the
catalog's own files, then ``predict`` with the stored adapter: the export is the
prompts as trained (nothing to merge), and predict gives what the evaluation gave."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from clip_lora_pipeline.core.cells import Cell
from clip_lora_pipeline.core.manifest import class_table
from clip_lora_pipeline.core.models import TINY_MODEL
from clip_lora_pipeline.core.predict import logits_from_adapter
from clip_lora_pipeline.datasets import JSONDataset, ParquetDataset, SafetensorsDataset
from clip_lora_pipeline.pipelines.lora.pipeline import for_cell
from clip_lora_pipeline.pipelines.predict import nodes as predict_nodes
from tests.conftest import synthetic_splits

MODEL = {"name": TINY_MODEL, "pretrained": None, "checkpoint": None}
RUNTIME = {"device": "cpu", "precision": "fp32", "batch_size": 16, "num_workers": 0}
VPT = {"method": "vpt", "lr": 5e-2, "max_steps": 20, "batch_size": 16, "eval_every": 10,
       "checkpoint_every": 10, "crop_scale": [0.5, 1.0], "vpt": {"depth": "deep"}}
CELL = Cell(shots=4, seed=1)
OUT = "shapes.shots_4_seed_1"
PREFIX = f"{OUT}.adapted_vpt"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The catalog after the vpt train, evaluate and export nodes ran, and the data."""
    data = synthetic_splits(tmp_path_factory.mktemp("shapes"), images_per_class=16, shots=4)
    dataset, manifest, train, val, test = data
    out = tmp_path_factory.mktemp("out")
    catalog = DataCatalog({
        "params:dataset_configs.shapes": MemoryDataset(dataset),
        "params:model": MemoryDataset(MODEL),
        "params:runtime": MemoryDataset(RUNTIME),
        "params:checkpoint_root": MemoryDataset(str(out / "checkpoints")),
        "params:embedding_store": MemoryDataset(str(out / "store")),
        "params:adaptation_methods.vpt": MemoryDataset(VPT),
        "shapes.classes": MemoryDataset(class_table(manifest)), "shapes.test": MemoryDataset(test),
        f"{OUT}.train": MemoryDataset(train), f"{OUT}.val": MemoryDataset(val),
        f"{PREFIX}_adapter": SafetensorsDataset(str(out / "adapter.safetensors")),
        f"{PREFIX}_merged_model": SafetensorsDataset(str(out / "merged.safetensors")),
        f"{PREFIX}_summary": JSONDataset(filepath=str(out / "summary.json")),
        f"{PREFIX}_metrics": JSONDataset(filepath=str(out / "metrics.json")),
        **{f"{PREFIX}_{t}": ParquetDataset(filepath=str(out / f"{t}.parquet"))
           for t in ("history", "per_class", "predictions")},
    })
    SequentialRunner().run(for_cell("shapes", CELL, ["vpt"]), catalog)
    return catalog, data


def test_vpt_trains_evaluates_and_exports_its_prompts(run):
    catalog, data = run
    summary, metrics = catalog.load(f"{PREFIX}_summary"), catalog.load(f"{PREFIX}_metrics")
    assert summary["steps"] == 20 and metrics["method"] == "vpt"
    assert metrics["n_images"] == len(data[4])
    assert len(catalog.load(f"{PREFIX}_history")) == 20
    adapter = catalog.load(f"{PREFIX}_adapter")
    assert list(adapter["tensors"]) == ["prompts"]
    assert adapter["tensors"]["prompts"].shape == (2, 5, 64)  # deep: 2 blocks x 5 tokens
    assert summary["trainable_parameters"] == metrics["trainable_parameters"] == 2 * 5 * 64
    export = catalog.load(f"{PREFIX}_merged_model")
    assert export["config"]["merged"] is False
    assert export["config"]["adapter"] == adapter["config"]["method"]
    assert export["tensors"].keys() == adapter["tensors"].keys()
    torch.testing.assert_close(export["tensors"]["prompts"], adapter["tensors"]["prompts"],
                               rtol=0, atol=0)


def test_predict_with_the_stored_adapter_gives_what_the_evaluation_gave(run):
    catalog, data = run
    dataset, *_, test = data
    adapter = catalog.load(f"{PREFIX}_adapter")  # read back from its safetensors file
    evaluation = catalog.load(f"{PREFIX}_predictions").set_index("path")
    images = test[["path"]].reset_index(drop=True)
    params = {"input": dataset["root"], "dataset": "shapes", "model": "vpt", "top_k": 5}
    table, _ = predict_nodes.predict_adapted(images, adapter, MODEL, RUNTIME, params)
    expected = evaluation.loc[table["file"]]
    assert table["predicted_class"].tolist() == expected["predicted_class"].tolist()
    np.testing.assert_allclose(table["confidence"], expected["confidence"], rtol=1e-5)
    # the prompts are what predicts: untrained (zero) prompts give other logits
    logits, _ = logits_from_adapter(images, dataset["root"], adapter, MODEL, RUNTIME)
    zeroed = {**adapter, "tensors": {"prompts": torch.zeros_like(adapter["tensors"]["prompts"])}}
    other, _ = logits_from_adapter(images, dataset["root"], zeroed, MODEL, RUNTIME)
    assert np.abs(logits - other).max() > 1e-2
