"""Thin wrappers over ``core.report.sweep``: one row per finished cell, then mean, std
and seed count per dataset, method and shots, as the papers' table and a curve."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from clip_lora_pipeline.core.report import sweep

# (dataset, method, shots, seed) of each metrics input, in input order; zero-shot rows
# have shots 0 and no seed.
CellKey = tuple[str, str, int, int | None]


def sweep_cells(*metrics: dict[str, Any], keys: Sequence[CellKey]) -> pd.DataFrame:
    """The long table of every cell's test metrics."""
    if len(metrics) != len(keys):
        raise ValueError(f"{len(metrics)} metrics for {len(keys)} cells.")
    return pd.DataFrame([
        {"dataset": dataset, "method": method, "shots": shots, "seed": seed,
         "top1": m["top1"], "n_images": m["n_images"]}
        for (dataset, method, shots, seed), m in zip(keys, metrics)
    ]).astype({"seed": "Int64"})


def sweep_report(cells: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, str, Figure]:
    """Mean, std and seed count per dataset, method and shots; the papers' table (datasets
    as columns plus their average) as a table and markdown; accuracy against shots."""
    aggregate = sweep.aggregate_cells(cells)
    table = sweep.paper_table(aggregate)
    return aggregate, table, sweep.paper_markdown(table), sweep.shots_curve_figure(aggregate)
