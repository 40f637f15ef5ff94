"""The generation node per dataset, on the run's few-shot cell: it reads the cell's
training sample and writes the dataset's manifest of generated images
(``<dataset>.generated_images``). Not in ``__default__``: it needs diffusers and a
Stable Diffusion folder."""

from kedro.pipeline import Node, Pipeline

from clip_lora_pipeline.core.cells import Cell
from clip_lora_pipeline.fingerprints import VOLATILE
from clip_lora_pipeline.pipelines import namespaces
from clip_lora_pipeline.pipelines.augment.nodes import generate_images


def create_pipeline(name: str) -> Pipeline:
    return Pipeline([
        Node(
            namespaces.bound(generate_images, name=name),
            {"train": "train", "dataset": "params:dataset", "augment": "params:augment",
             "runtime": "params:runtime"},
            "generated_images",
            name="generate_images",
            # it reads the images folder, outside the catalog: checked on every run
            # (quick when every image is there: no model is loaded)
            tags=["augment", "gpu", VOLATILE],
        ),
    ])


def for_cell(name: str, cell: Cell) -> Pipeline:
    """In the dataset's namespace (``flowers102.generate_images``), reading the cell's
    sample (``flowers102.shots_16_seed_1.train``): the images and their manifest serve
    every cell, each adding the images its sample lacks."""
    return Pipeline(create_pipeline(name), namespace=name,
                    inputs={"train": f"{name}.{cell.name}.train"},
                    parameters={"params:dataset": f"params:dataset_configs.{name}",
                                "params:augment": "params:augment",
                                "params:runtime": "params:runtime"})
