"""Per dataset: encode the test split once, then one text classifier and zero-shot
evaluation per prompt set. Per few-shot cell: encode its train and val samples."""

from kedro.pipeline import Node, Pipeline

from clip_lora_pipeline.core.cells import Cell
from clip_lora_pipeline.pipelines import namespaces
from clip_lora_pipeline.pipelines.zero_shot.nodes import (
    encode_few_shot,
    encode_test,
    text_classifier,
    zero_shot,
)

SHARED_PARAMETERS = {"params:model", "params:runtime", "params:embedding_store"}


def create_test_embeddings_pipeline() -> Pipeline:
    return Pipeline([
        Node(encode_test, ["test", "params:dataset", "params:model", "params:runtime",
                           "params:embedding_store"],
             "test_embeddings", name="encode_test", tags=["embeddings", "gpu"])
    ])


def create_cell_embeddings_pipeline() -> Pipeline:
    return Pipeline([
        Node(encode_few_shot,
             ["train", "val", "params:dataset", "params:model", "params:runtime",
              "params:embedding_store"],
             ["train_embeddings", "val_embeddings"],
             name="encode_few_shot", tags=["embeddings", "gpu"])
    ])


def text_classifier_node(prompt_set: str) -> Node:
    return Node(
        text_classifier,
        ["classes", "params:dataset", f"params:prompt_sets.{prompt_set}",
         "params:model", "params:runtime"],
        f"text_classifier_{prompt_set}",
        name=f"text_classifier_{prompt_set}",
        tags=["embeddings"],
    )


def create_pipeline(prompt_sets: list[str]) -> Pipeline:
    """Test embeddings, then a text classifier and evaluation per prompt set."""
    nodes = list(create_test_embeddings_pipeline().nodes)
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


def _parameters(prompt_sets: list[str]) -> set[str]:
    return SHARED_PARAMETERS | {f"params:prompt_sets.{s}" for s in prompt_sets}


def for_dataset(name: str, prompt_sets: list[str]) -> Pipeline:
    return namespaces.for_dataset(create_pipeline(prompt_sets), name, _parameters(prompt_sets))


def encode_test_for_dataset(name: str) -> Pipeline:
    return namespaces.for_dataset(create_test_embeddings_pipeline(), name, SHARED_PARAMETERS)


def text_classifier_for_dataset(name: str, prompt_set: str) -> Pipeline:
    return namespaces.for_dataset(Pipeline([text_classifier_node(prompt_set)]), name,
                                  _parameters([prompt_set]))


def embeddings_for_cell(name: str, cell: Cell) -> Pipeline:
    return namespaces.for_cell(create_cell_embeddings_pipeline(), name, cell, SHARED_PARAMETERS)
