"""The data pipeline: per dataset (download, validate, split) and per few-shot cell
(the sample); the registry namespaces both."""

from kedro.pipeline import Node, Pipeline

from clip_lora_pipeline.core.cells import Cell
from clip_lora_pipeline.fingerprints import READS_DATASET_FOLDER
from clip_lora_pipeline.pipelines import namespaces
from clip_lora_pipeline.pipelines.data.nodes import (
    classes,
    download,
    few_shot,
    split,
    validate,
)

# Parameters shared by every dataset namespace (not prefixed with the namespace).
DATASET_PARAMETERS = {"params:download", "params:validation", "params:split"}
CELL_PARAMETERS = {"params:val_shots"}


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            # The two nodes that read the dataset's folder itself (later ones read the images
            # that validate lists, with their content hashes).
            Node(download, ["params:dataset", "params:download"], "manifest", name="download",
                 tags=READS_DATASET_FOLDER),
            Node(
                validate,
                ["manifest", "params:dataset", "params:validation"],
                ["images", "rejected_images"],
                name="validate",
                tags=READS_DATASET_FOLDER,
            ),
            Node(classes, "manifest", "classes", name="classes"),
            Node(
                split, ["images", "params:split"], ["train_pool", "val_pool", "test"],
                name="split",
            ),
        ],
        tags="data",
    )


def create_cell_pipeline(cell: Cell) -> Pipeline:
    """The few-shot sample of one cell: its shots and seed are fixed in the node."""
    return Pipeline(
        [
            Node(
                namespaces.bound(few_shot, shots=cell.shots, seed=cell.seed),
                {"train_pool": "train_pool", "val_pool": "val_pool", "test": "test",
                 "val_shots": "params:val_shots", "dataset": "params:dataset"},
                ["train", "val"],
                name="few_shot",
            ),
        ],
        tags="data",
    )


def for_dataset(name: str) -> Pipeline:
    """The dataset-level data pipeline in namespace ``name``."""
    return namespaces.for_dataset(create_pipeline(), name, DATASET_PARAMETERS)


def for_cell(name: str, cell: Cell) -> Pipeline:
    return namespaces.for_cell(create_cell_pipeline(cell), name, cell, CELL_PARAMETERS)
