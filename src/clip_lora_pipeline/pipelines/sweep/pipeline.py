"""The sweep: every configured dataset and method over a grid of shots x seeds, then
one aggregate report. Each cell is the same nodes as a single run (see the registry);
this module adds the aggregate over them."""

from __future__ import annotations

import warnings

from kedro.pipeline import Node, Pipeline

from clip_lora_pipeline.core.cells import SweepSettings
from clip_lora_pipeline.pipelines import namespaces
from clip_lora_pipeline.pipelines.sweep.nodes import sweep_cells, sweep_report


def create_aggregate_pipeline(sweep: SweepSettings, cell_methods: dict[str, dict[str, str]],
                              zero_shot: dict[str, list[str]]) -> Pipeline:
    """``cell_methods``: per dataset, method name -> prefix of its per-cell results;
    ``zero_shot``: per dataset, its zero-shot method names (their results are per
    dataset: they use no shots)."""
    keys, inputs = [], []
    for dataset, prefixes in cell_methods.items():
        for method in zero_shot.get(dataset, []):
            keys.append((dataset, method, 0, None))
            inputs.append(f"{dataset}.{method}_metrics")
        for cell in sweep.cells:
            for method, prefix in prefixes.items():
                keys.append((dataset, method, cell.shots, cell.seed))
                inputs.append(f"{dataset}.{cell.name}.{prefix}_metrics")
    with warnings.catch_warnings():
        # The aggregate reads every dataset's namespaced results by design.
        warnings.filterwarnings("ignore", message="One or more dataset names contain '.'")
        nodes = Pipeline([
            Node(namespaces.bound(sweep_cells, keys=keys), inputs, "cells", name="collect",
                 tags=["reporting", "sweep"]),
            Node(sweep_report, "cells", ["aggregate", "table", "table_markdown", "curves"],
                 name="report", tags=["reporting", "sweep"]),
        ])
        # One namespace per grid: sweep.shots_1-2-4_seeds_1-2.aggregate, ...
        return Pipeline(nodes, namespace=f"sweep.{sweep.name}", inputs=set(inputs))
