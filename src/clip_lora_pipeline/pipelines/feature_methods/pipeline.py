"""Per few-shot cell: every ``feature_methods`` entry fit on the cached embeddings, and
the augmented views for those that train on them."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from clip_lora_pipeline.core.cells import Cell
from clip_lora_pipeline.core.methods.registry import FeatureMethodEntry
from clip_lora_pipeline.pipelines import namespaces
from clip_lora_pipeline.pipelines.feature_methods.nodes import (
    encode_views,
    fit_feature_method,
)


def method_node(entry: FeatureMethodEntry, cell: Cell) -> Node:
    inputs = {"train_embeddings": "train_embeddings", "val_embeddings": "val_embeddings",
              "test_embeddings": "test_embeddings", "classes": "classes",
              "params": f"params:feature_methods.{entry.name}"}
    if entry.prompt_set is not None:
        inputs["classifier"] = f"text_classifier_{entry.prompt_set}"
    if entry.method.uses_views:
        inputs["train_views"] = "train_views"
    return Node(
        namespaces.bound(fit_feature_method, name=entry.name, shots=cell.shots, seed=cell.seed),
        inputs,
        [f"{entry.name}_model", f"{entry.name}_metrics", f"{entry.name}_per_class",
         f"{entry.name}_predictions"],
        name=entry.name, tags=["feature_methods", entry.name],
    )


def views_node(cell: Cell) -> Node:
    return Node(
        namespaces.bound(encode_views, seed=cell.seed),
        ["train", "params:dataset", "params:model", "params:runtime", "params:augmented_views"],
        "train_views", name="encode_views", tags=["embeddings", "gpu"],
    )


def create_pipeline(entries: list[FeatureMethodEntry], cell: Cell) -> Pipeline:
    nodes = [method_node(entry, cell) for entry in entries]
    if any(entry.method.uses_views for entry in entries):
        nodes.append(views_node(cell))
    return Pipeline(nodes)


def for_cell(name: str, cell: Cell, entries: list[FeatureMethodEntry]) -> Pipeline:
    if not entries:  # a namespace cannot map parameters onto no nodes
        return Pipeline([])
    parameters = {f"params:feature_methods.{e.name}" for e in entries} | {
        "params:model", "params:runtime", "params:augmented_views"}
    return namespaces.for_cell(create_pipeline(entries, cell), name, cell, parameters)
