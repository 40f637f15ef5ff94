"""Per dataset: linear classifiers on the cached embeddings: the logistic-regression
probe and, unless turned off, the head initialised from a text classifier."""

from kedro.pipeline import Node, Pipeline

from clip_lora_pipeline.pipelines.linear_probe.nodes import (
    linear_probe,
    text_initialised_head,
)


def create_pipeline(head_prompt_set: str | None = None) -> Pipeline:
    """``head_prompt_set``: whose text classifier starts the head; None leaves it out."""
    nodes = [
        Node(
            linear_probe,
            ["train_embeddings", "val_embeddings", "test_embeddings", "manifest",
             "params:linear_probe", "params:shots"],
            ["linear_probe_model", "linear_probe_metrics", "linear_probe_per_class",
             "linear_probe_predictions"],
            name="linear_probe",
            tags=["linear_probe"],
        )
    ]
    if head_prompt_set is not None:
        nodes.append(Node(
            text_initialised_head,
            ["train_embeddings", "val_embeddings", "test_embeddings",
             f"text_classifier_{head_prompt_set}", "params:text_init_head", "params:shots"],
            ["text_init_head_model", "text_init_head_metrics", "text_init_head_per_class",
             "text_init_head_predictions"],
            name="text_init_head",
            tags=["linear_probe"],
        ))
    return Pipeline(nodes)


def for_dataset(name: str, head_prompt_set: str | None = None) -> Pipeline:
    parameters = {"params:linear_probe", "params:shots"}
    if head_prompt_set is not None:
        parameters.add("params:text_init_head")
    return Pipeline(create_pipeline(head_prompt_set), namespace=name, parameters=parameters)
