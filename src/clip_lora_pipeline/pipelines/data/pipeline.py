"""The data pipeline for one dataset; the registry namespaces it per dataset."""

from kedro.pipeline import Node, Pipeline

from clip_lora_pipeline.pipelines.data.nodes import download, few_shot, split, validate

# Parameters shared by every dataset namespace (not prefixed with the namespace).
SHARED_PARAMETERS = {
    "params:download", "params:validation", "params:split",
    "params:shots", "params:val_shots", "params:few_shot_seed",
}


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(download, ["params:dataset", "params:download"], "manifest", name="download"),
            Node(
                validate,
                ["manifest", "params:dataset", "params:validation"],
                ["images", "rejected_images"],
                name="validate",
            ),
            Node(
                split, ["images", "params:split"], ["train_pool", "val_pool", "test"],
                name="split",
            ),
            Node(
                few_shot,
                ["train_pool", "val_pool", "test", "params:shots", "params:val_shots",
                 "params:few_shot_seed"],
                ["train", "val"],
                name="few_shot",
            ),
        ],
        tags="data",
    )


def for_dataset(name: str) -> Pipeline:
    """The data pipeline in namespace ``name``, reading ``params:dataset_configs.<name>``."""
    return Pipeline(
        create_pipeline(),
        namespace=name,
        parameters={"params:dataset": f"params:dataset_configs.{name}", **{p: p for p in SHARED_PARAMETERS}},
    )
