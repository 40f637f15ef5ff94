"""Per dataset and adaptation method (lora, bitfit, ...): train, evaluate, export."""

from kedro.pipeline import Node, Pipeline

from clip_lora_pipeline.pipelines.lora.nodes import (
    evaluate_adapter,
    export_merged,
    train_adapter,
)

SHARED = {"params:model", "params:runtime", "params:shots", "params:checkpoint_root"}


def create_pipeline(methods: list[str]) -> Pipeline:
    nodes = []
    for method in methods:
        prefix = f"adapted_{method}"
        nodes += [
            Node(
                train_adapter,
                ["train", "val", "manifest", "params:dataset", "params:model", "params:runtime",
                 "params:shots", f"params:adaptation_methods.{method}", "params:checkpoint_root"],
                [f"{prefix}_adapter", f"{prefix}_history", f"{prefix}_summary"],
                name=f"train_{method}",
                tags=["training", "gpu", method],
            ),
            Node(
                evaluate_adapter,
                ["test", f"{prefix}_adapter", f"{prefix}_summary", "params:dataset",
                 "params:model", "params:runtime"],
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


def for_dataset(name: str, methods: list[str]) -> Pipeline:
    if not methods:  # a namespace cannot map parameters onto no nodes
        return Pipeline([])
    return Pipeline(
        create_pipeline(methods),
        namespace=name,
        parameters={
            "params:dataset": f"params:dataset_configs.{name}",
            **{p: p for p in SHARED},
            **{f"params:adaptation_methods.{m}": f"params:adaptation_methods.{m}" for m in methods},
        },
    )
