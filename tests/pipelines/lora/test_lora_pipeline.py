"""The lora pipeline (LoRA, BitFit and CoOp) with SequentialRunner on generated shapes."""

from __future__ import annotations

import open_clip
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from clip_lora_pipeline.core.adapted import AdaptedClip
from clip_lora_pipeline.core.cells import Cell
from clip_lora_pipeline.core.manifest import class_table
from clip_lora_pipeline.core.models import TINY_MODEL
from clip_lora_pipeline.datasets import JSONDataset, ParquetDataset, SafetensorsDataset
from clip_lora_pipeline.pipelines.lora import nodes
from clip_lora_pipeline.pipelines.lora.pipeline import for_cell
from tests.conftest import synthetic_splits

MODEL = {"name": TINY_MODEL, "pretrained": None, "checkpoint": None}
RUNTIME = {"device": "auto", "precision": "auto", "batch_size": 16, "num_workers": "auto"}
FAST = {"lr": 5e-3, "max_steps": 20, "batch_size": 16, "eval_every": 10,
        "checkpoint_every": 10, "crop_scale": [0.5, 1.0]}
METHODS = {
    "lora": {"method": "lora", **FAST, "lora": {"r": 4, "alpha": 8, "dropout": 0.1}},
    "bitfit": {"method": "bitfit", **FAST, "bitfit": {"layernorm": True}},
    # CoOp's recipe (SGD, a warm-up epoch, cosine) but for the steps and lr
    "coop": {"method": "coop", **FAST, "coop": {"class_specific": True}},
}
CELL = Cell(shots=4, seed=1)
OUT = "shapes.shots_4_seed_1"  # the cell's namespace


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 16 per class: the hash split (seed 0) leaves every class >= 6 train and >= 3 val
    # images for the 4 and 2 sampled; 12 leaves a class 3 train images.
    return synthetic_splits(tmp_path_factory.mktemp("shapes"), images_per_class=16, shots=4)


def _catalog(tmp_path, data):
    dataset, manifest, train, val, test = data
    entries = {
        "params:dataset_configs.shapes": MemoryDataset(dataset),
        "params:model": MemoryDataset(MODEL),
        "params:runtime": MemoryDataset(RUNTIME),
        "params:checkpoint_root": MemoryDataset(str(tmp_path / "checkpoints")),
        "params:embedding_store": MemoryDataset(str(tmp_path / "store")),
        **{f"params:adaptation_methods.{m}": MemoryDataset(v) for m, v in METHODS.items()},
    }
    for name, frame in (("classes", class_table(manifest)), ("test", test)):
        entries[f"shapes.{name}"] = MemoryDataset(frame)
    for name, frame in (("train", train), ("val", val)):
        entries[f"{OUT}.{name}"] = MemoryDataset(frame)
    for method in METHODS:
        out = tmp_path / method
        prefix = f"{OUT}.adapted_{method}"
        entries[f"{prefix}_adapter"] = SafetensorsDataset(str(out / "adapter.safetensors"))
        entries[f"{prefix}_merged_model"] = SafetensorsDataset(str(out / "merged.safetensors"))
        entries[f"{prefix}_summary"] = JSONDataset(filepath=str(out / "summary.json"))
        entries[f"{prefix}_metrics"] = JSONDataset(filepath=str(out / "metrics.json"))
        for table in ("history", "per_class", "predictions"):
            entries[f"{prefix}_{table}"] = ParquetDataset(filepath=str(out / f"{table}.parquet"))
    return DataCatalog(entries)


def test_pipeline_trains_evaluates_and_exports_every_method(tmp_path, data):
    catalog = _catalog(tmp_path, data)
    SequentialRunner().run(for_cell("shapes", CELL, list(METHODS)), catalog)
    for method in METHODS:
        prefix = f"{OUT}.adapted_{method}"
        metrics = catalog.load(f"{prefix}_metrics")
        summary = catalog.load(f"{prefix}_summary")
        assert metrics["n_images"] == len(data[4]) and metrics["method"] == method
        assert summary["steps"] == 20 and summary["trainable_parameters"] > 0
        assert summary["peak_memory_kind"] == "peak RSS above the start"
        history = catalog.load(f"{prefix}_history")
        assert len(history) == 20 and history["val_accuracy"].notna().sum() == 2
        adapter = catalog.load(f"{prefix}_adapter")
        assert adapter["config"]["method"]["method"] == method
        assert adapter["config"]["name"] == method  # the entry's name, for its errors
        assert sum(t.numel() for t in adapter["tensors"].values()) == \
            summary["trainable_parameters"]
    lora_names = catalog.load(f"{OUT}.adapted_lora_adapter")["tensors"]
    assert all("lora_" in name for name in lora_names)
    bitfit_names = catalog.load(f"{OUT}.adapted_bitfit_adapter")["tensors"]
    assert all(n.endswith((".bias", ".weight")) and "lora" not in n for n in bitfit_names)
    coop = catalog.load(f"{OUT}.adapted_coop_merged_model")  # the adapter, not merged
    assert coop["config"]["merged"] is False and list(coop["tensors"]) == [
        "prompt_context.vectors"]


def test_merged_export_loads_into_plain_open_clip_and_matches(tmp_path, data):
    catalog = _catalog(tmp_path, data)
    pipeline = for_cell("shapes", CELL, ["lora"])
    SequentialRunner().run(pipeline, catalog)
    adapter = catalog.load(f"{OUT}.adapted_lora_adapter")
    adapted = AdaptedClip.from_artifact(adapter, MODEL, RUNTIME)
    plain = open_clip.create_model(TINY_MODEL, pretrained=str(tmp_path / "lora" / "merged.safetensors"))
    plain.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain.encode_image(images),
                                   adapted.clip.encode_image(images), atol=1e-5, rtol=1e-5)


def test_evaluation_refuses_an_adapter_of_another_model(tmp_path, data):
    catalog = _catalog(tmp_path, data)
    SequentialRunner().run(for_cell("shapes", CELL, ["lora"]).only_nodes(f"{OUT}.train_lora"), catalog)
    adapter = catalog.load(f"{OUT}.adapted_lora_adapter")
    with pytest.raises(ValueError, match="re-run training"):
        nodes.evaluate_adapter(data[4], adapter, {}, data[0],
                               {**MODEL, "name": "ViT-B-32"}, RUNTIME)


def test_another_precision_trains_afresh_instead_of_resuming(tmp_path, data):
    """A run in another precision would not give the same result as the checkpoint's:
    the precision is part of the checkpoint folder's identity. The encoding nodes'
    shared model is freed while training."""
    from clip_lora_pipeline.core import models

    models.shared_model(models.ModelSpec(models.TINY_MODEL), "cpu")
    dataset, manifest, train, val, _ = data
    entry = {**METHODS["bitfit"], "max_steps": 2, "eval_every": None, "checkpoint_every": 1}
    folders = [
        nodes.train_adapter(train, val, class_table(manifest), dataset, MODEL,
                            {**RUNTIME, "device": "cpu", "precision": precision}, 4, entry,
                            str(tmp_path), name="bitfit", seed=1)[2]["checkpoint"]
        for precision in ("fp32", "bf16")]
    assert folders[0] != folders[1]
    assert models._shared.cache_info().currsize == 0


def test_coop_trains_for_its_epochs_by_shots(tmp_path, data):
    """Steps = the entry's epochs for the cell's shots x batches per epoch; a run on
    all images (shots null) has no entry and names the setting."""
    dataset, manifest, train, val, _ = data
    entry = {"method": "coop", "epochs": {1: 1, 4: 2}, "batch_size": 16, "eval_every": None,
             "warmup_epochs": 0}
    runtime = {**RUNTIME, "device": "cpu", "precision": "fp32"}
    summary = nodes.train_adapter(train, val, class_table(manifest), dataset, MODEL, runtime, 4, entry,
                                  str(tmp_path), name="coop", seed=1)[2]
    assert summary["steps"] == 2 * -(-len(train) // 16)
    with pytest.raises(ValueError, match=r"^adaptation_methods\.coop\.epochs maps shots to "
                                         r"epochs, but shots is null"):
        nodes.train_adapter(train, val, class_table(manifest), dataset, MODEL, runtime, None, entry,
                            str(tmp_path), name="coop", seed=1)
