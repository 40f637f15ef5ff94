"""Per dataset: encode the splits once, then one classifier and evaluation per prompt set."""

from kedro.pipeline import Node, Pipeline

from clip_lora_pipeline.pipelines.zero_shot.nodes import (
    encode_splits,
    text_classifier,
    zero_shot,
)

SHARED_PARAMETERS = {"params:model", "params:runtime"}


def create_embeddings_pipeline() -> Pipeline:
    return Pipeline([
        Node(
            encode_splits,
            ["train", "val", "test", "params:dataset", "params:model", "params:runtime"],
            ["train_embeddings", "val_embeddings", "test_embeddings"],
            name="encode_images",
            tags=["embeddings", "gpu"],
        )
    ])


def text_classifier_node(prompt_set: str) -> Node:
    return Node(
        text_classifier,
        ["manifest", "params:dataset", f"params:prompt_sets.{prompt_set}",
         "params:model", "params:runtime"],
        f"text_classifier_{prompt_set}",
        name=f"text_classifier_{prompt_set}",
        tags=["embeddings"],
    )


def create_pipeline(prompt_sets: list[str]) -> Pipeline:
    """Image embeddings, then a text classifier and evaluation per prompt set."""
    nodes = list(create_embeddings_pipeline().nodes)
    for prompt_set in prompt_sets:
        nodes += [
            text_classifier_node(prompt_set),
            Node(
                zero_shot,
                ["test_embeddings", f"text_classifier_{prompt_set}"],
                [f"zero_shot_{prompt_set}_metrics", f"zero_shot_{prompt_set}_per_class",
                 f"zero_shot_{prompt_set}_predictions"],
                name=f"zero_shot_{prompt_set}",
                tags=["zero_shot"],
            ),
        ]
    return Pipeline(nodes)


def _namespaced(pipeline: Pipeline, name: str, prompt_sets: list[str]) -> Pipeline:
    return Pipeline(
        pipeline,
        namespace=name,
        parameters={
            "params:dataset": f"params:dataset_configs.{name}",
            **{p: p for p in SHARED_PARAMETERS},
            **{f"params:prompt_sets.{s}": f"params:prompt_sets.{s}" for s in prompt_sets},
        },
    )


def for_dataset(name: str, prompt_sets: list[str]) -> Pipeline:
    return _namespaced(create_pipeline(prompt_sets), name, prompt_sets)


def embeddings_for_dataset(name: str) -> Pipeline:
    return _namespaced(create_embeddings_pipeline(), name, [])


def text_classifier_for_dataset(name: str, prompt_set: str) -> Pipeline:
    return _namespaced(Pipeline([text_classifier_node(prompt_set)]), name, [prompt_set])
