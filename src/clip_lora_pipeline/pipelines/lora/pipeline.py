"""Per few-shot cell and adaptation method (lora, bitfit, ...): train, evaluate, export."""

from kedro.pipeline import Node, Pipeline

from clip_lora_pipeline.core.cells import Cell
from clip_lora_pipeline.pipelines import namespaces
from clip_lora_pipeline.pipelines.lora.nodes import (
    evaluate_adapter,
    export_merged,
    train_adapter,
)

SHARED = {"params:model", "params:runtime", "params:checkpoint_root",
          "params:embedding_store"}


def create_pipeline(methods: list[str], cell: Cell) -> Pipeline:
    nodes = []
    for method in methods:
        prefix = f"adapted_{method}"
        nodes += [
            Node(
                namespaces.bound(train_adapter, shots=cell.shots, seed=cell.seed, name=method),
                {"train": "train", "val": "val", "classes": "classes",
                 "dataset": "params:dataset", "model_params": "params:model",
                 "runtime": "params:runtime", "method": f"params:adaptation_methods.{method}",
                 "checkpoint_root": "params:checkpoint_root"},
                [f"{prefix}_adapter", f"{prefix}_history", f"{prefix}_summary"],
                name=f"train_{method}",
                tags=["training", "gpu", method],
            ),
            Node(
                evaluate_adapter,
                ["test", f"{prefix}_adapter", f"{prefix}_summary", "params:dataset",
                 "params:model", "params:runtime", "params:embedding_store"],
                [f"{prefix}_metrics", f"{prefix}_per_class", f"{prefix}_predictions"],
                name=f"evaluate_{method}",
                tags=["evaluation", "gpu", method],
            ),
            Node(
                export_merged,
                [f"{prefix}_adapter", "params:model", "params:runtime"],
                f"{prefix}_merged_model",
                name=f"export_{method}",
                tags=["export", method],
            ),
        ]
    return Pipeline(nodes)


def for_cell(name: str, cell: Cell, methods: list[str]) -> Pipeline:
    if not methods:  # a namespace cannot map parameters onto no nodes
        return Pipeline([])
    return namespaces.for_cell(
        create_pipeline(methods, cell), name, cell,
        SHARED | {f"params:adaptation_methods.{m}" for m in methods},
    )
