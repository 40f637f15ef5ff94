"""Per dataset: the linear probe on cached embeddings."""

from kedro.pipeline import Node, Pipeline

from clip_lora_pipeline.pipelines.linear_probe.nodes import linear_probe


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(
            linear_probe,
            ["train_embeddings", "val_embeddings", "test_embeddings", "manifest",
             "params:linear_probe", "params:shots"],
            ["linear_probe_model", "linear_probe_metrics", "linear_probe_per_class",
             "linear_probe_predictions"],
            name="linear_probe",
            tags=["linear_probe"],
        )
    ])


def for_dataset(name: str) -> Pipeline:
    return Pipeline(create_pipeline(), namespace=name, parameters={"params:linear_probe", "params:shots"})
