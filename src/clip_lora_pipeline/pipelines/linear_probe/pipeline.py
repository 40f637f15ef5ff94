"""Per few-shot cell: linear classifiers on the cached embeddings: the logistic-regression
probe and, unless turned off, the head initialised from a text classifier."""

from kedro.pipeline import Node, Pipeline

from clip_lora_pipeline.core.cells import Cell
from clip_lora_pipeline.pipelines import namespaces
from clip_lora_pipeline.pipelines.linear_probe.nodes import (
    linear_probe,
    text_initialised_head,
)


def create_pipeline(cell: Cell, head_prompt_set: str | None = None) -> Pipeline:
    """``head_prompt_set``: whose text classifier starts the head; None leaves it out."""
    nodes = [
        Node(
            namespaces.bound(linear_probe, shots=cell.shots),
            ["train_embeddings", "val_embeddings", "test_embeddings", "manifest",
             "params:linear_probe"],
            ["linear_probe_model", "linear_probe_metrics", "linear_probe_per_class",
             "linear_probe_predictions"],
            name="linear_probe",
            tags=["linear_probe"],
        )
    ]
    if head_prompt_set is not None:
        nodes.append(Node(
            namespaces.bound(text_initialised_head, shots=cell.shots),
            ["train_embeddings", "val_embeddings", "test_embeddings",
             f"text_classifier_{head_prompt_set}", "params:text_init_head"],
            ["text_init_head_model", "text_init_head_metrics", "text_init_head_per_class",
             "text_init_head_predictions"],
            name="text_init_head",
            tags=["linear_probe"],
        ))
    return Pipeline(nodes)


def for_cell(name: str, cell: Cell, head_prompt_set: str | None = None) -> Pipeline:
    parameters = {"params:linear_probe"}
    if head_prompt_set is not None:
        parameters.add("params:text_init_head")
    return namespaces.for_cell(create_pipeline(cell, head_prompt_set), name, cell, parameters)
