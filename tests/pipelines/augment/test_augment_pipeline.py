"""The augment pipeline end to end with SequentialRunner: a tiny random Stable Diffusion,
saved with save_pretrained and loaded by the node from its folder as real weights would
be, generates preserving and breaking images for a few-shot sample of the synthetic
shapes; a rerun makes none; LoRA then trains with them through the lora pipeline. The
registry offers the pipeline without putting it in ``__default__``."""

from __future__ import annotations

from unittest import mock

import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from clip_lora_pipeline import project_config
from clip_lora_pipeline.core import train_inputs
from clip_lora_pipeline.core.cells import Cell
from clip_lora_pipeline.core.manifest import class_table
from clip_lora_pipeline.core.models import TINY_MODEL
from clip_lora_pipeline.datasets import CSVDataset, JSONDataset
from clip_lora_pipeline.pipeline_registry import register_pipelines
from clip_lora_pipeline.pipelines.augment import nodes
from clip_lora_pipeline.pipelines.augment.pipeline import for_cell as augment_for_cell
from clip_lora_pipeline.pipelines.lora.pipeline import for_cell as lora_for_cell
from tests.conftest import synthetic_splits
from tests.core.tiny_sd import IMAGE_SIZE, save_tiny_sd

CELL = Cell(shots=1, seed=1)
OUT = "shapes.shots_1_seed_1"
MODEL = {"name": TINY_MODEL, "pretrained": None, "checkpoint": None}
RUNTIME = {"device": "cpu", "precision": "auto", "batch_size": 16, "num_workers": 0}
# 4 steps: img2img denoises int(steps x strength) of them, and 2 x 0.3 is none.
AUGMENT = {"steps": 4, "samples": 2, "breaking_strengths": [0.8], "image_size": IMAGE_SIZE}
METHOD = {"method": "lora", "lr": 5e-3, "max_steps": 6, "batch_size": 5, "eval_every": 3,
          "checkpoint_every": 3, "crop_scale": [0.5, 1.0],
          "lora": {"r": 4, "alpha": 8, "dropout": 0.1}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_splits(tmp_path_factory.mktemp("shapes"), images_per_class=16, shots=1)


def test_generated_images_are_made_once_and_train_lora(tmp_path, data):
    pytest.importorskip("diffusers")
    dataset, manifest, train, val, test = data
    model_path = save_tiny_sd(tmp_path / "tiny-sd")
    images = tmp_path / "generated"
    listing = images / "shapes" / "manifest.csv"  # where catalog.yml puts it
    catalog = DataCatalog({
        "params:dataset_configs.shapes": MemoryDataset(dataset),
        "params:augment": MemoryDataset({**AUGMENT, "model_path": str(model_path),
                                         "output_dir": str(images)}),
        "params:runtime": MemoryDataset(RUNTIME),
        f"{OUT}.train": MemoryDataset(train),
        "shapes.generated_images": CSVDataset(filepath=str(listing)),
    })
    SequentialRunner().run(augment_for_cell("shapes", CELL), catalog)
    made = catalog.load("shapes.generated_images")
    assert len(train) == 5 and len(made) == 5 * 2 * 2  # preserving 0.3 + breaking 0.8
    assert set(made["source"]) == set(train["path"])
    assert made.groupby("kind")["strength"].unique().map(list).to_dict() == {
        "breaking": [0.8], "preserving": [0.3]}
    assert all((images / "shapes" / p).is_file() for p in made["path"])

    with mock.patch.object(nodes, "load_img2img", side_effect=AssertionError("loaded")):
        SequentialRunner().run(augment_for_cell("shapes", CELL), catalog)  # all there
    assert catalog.load("shapes.generated_images").equals(made)

    entry = {**METHOD, "generated": {"manifest": str(listing), "root": str(listing.parent),
                                     "p": 0.5}}
    lora = DataCatalog({
        "params:dataset_configs.shapes": MemoryDataset(dataset),
        "params:model": MemoryDataset(MODEL), "params:runtime": MemoryDataset(RUNTIME),
        "params:checkpoint_root": MemoryDataset(str(tmp_path / "checkpoints")),
        "params:embedding_store": MemoryDataset(str(tmp_path / "store")),
        "params:adaptation_methods.lora_generated": MemoryDataset(entry),
        "shapes.classes": MemoryDataset(class_table(manifest)), "shapes.test": MemoryDataset(test),
        f"{OUT}.train": MemoryDataset(train), f"{OUT}.val": MemoryDataset(val),
        f"{OUT}.adapted_lora_generated_summary": JSONDataset(
            filepath=str(tmp_path / "summary.json")),
    })
    decoded = []
    real = train_inputs.PixelCache.decode

    def spy(paths, *args):
        decoded.extend(paths)
        return real(paths, *args)

    pipeline = lora_for_cell("shapes", CELL, ["lora_generated"])
    with mock.patch.object(train_inputs.PixelCache, "decode", side_effect=spy):
        SequentialRunner().run(pipeline.only_nodes(f"{OUT}.train_lora_generated"), lora)
    summary = lora.load(f"{OUT}.adapted_lora_generated_summary")
    assert summary["steps"] == 6
    assert summary["generated_images"] == {"preserving": 10, "breaking": 10}
    assert {str(images / "shapes" / p) for p in made["path"]} <= set(decoded)


def test_registry_offers_augment_outside_the_default_pipeline(monkeypatch):
    params = {"datasets": ["a"], "dataset_configs": {"a": {"source": "synthetic",
                                                           "root": "data/01_raw/a"}},
              "prompt_sets": {"simple": "simple"}, "adaptation_methods": {"lora": {}},
              "shots": 4, "few_shot_seed": 2}
    monkeypatch.setattr(project_config, "parameters", lambda: params)
    pipelines = register_pipelines()
    augment = pipelines["augment"]
    assert "a.generate_images" in {n.name for n in augment.nodes}
    assert "a.shots_4_seed_2.few_shot" in {n.name for n in augment.nodes}  # from scratch
    assert augment.outputs() >= {"a.generated_images"}
    assert all("generate_images" not in n.name for n in pipelines["__default__"].nodes)
    params["augment"] = {"stepz": 4}
    with pytest.raises(ValueError, match=r"augment\.stepz: unknown"):
        register_pipelines()
