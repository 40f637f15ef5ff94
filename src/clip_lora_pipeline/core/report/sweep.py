"""A sweep over shots and seeds, aggregated the way few-shot CLIP papers report it:
mean ± std over seeds per dataset, method and shots, a table with one column per
dataset plus their average, and accuracy against shots."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

KEYS = ["dataset", "method", "shots"]
AVERAGE = "average"
SHOT_TICKS = (1, 2, 4, 8, 16)
NOTE = ("Top-1 accuracy (%) on the test split, mean ± sample std over seeds; no ± where one "
        "seed ran. average: mean over the datasets, only where every dataset has the cell. "
        "—: not run.")


def aggregate_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std (ddof=1) of top-1 over seeds per dataset, method and shots.

    ``std`` is NaN where only one seed ran: a spread cannot be estimated from one run,
    and 0 would claim there is none. A (dataset, method, shots, seed) cell given twice
    with the same top-1 counts once: zero-shot does not depend on the shots or seed, so
    every run of a sweep repeats it. Twice with different values is an error.
    """
    missing = {*KEYS, "seed", "top1"} - set(cells.columns)
    if missing:
        raise ValueError(f"cells lack the columns {sorted(missing)}.")
    unique = cells.drop_duplicates(subset=[*KEYS, "seed", "top1"])
    clash = unique[unique.duplicated(subset=[*KEYS, "seed"], keep=False)]
    if len(clash):
        raise ValueError(f"cells disagree for the same dataset, method, shots and seed: "
                         f"{clash[[*KEYS, 'seed', 'top1']].to_dict('records')[:4]}")
    grouped = unique.groupby(KEYS, sort=False)["top1"]
    aggregate = grouped.agg(mean="mean", std=lambda v: v.std(ddof=1), n_seeds="count")
    # datasets and methods in the order the cells list them (the configured order)
    order = {c: {v: i for i, v in enumerate(dict.fromkeys(unique[c]))} for c in KEYS[:2]}
    return aggregate.reset_index().sort_values(
        KEYS, key=lambda col: col.map(order[col.name]) if col.name in order else col,
        kind="stable", ignore_index=True)


def with_average(aggregate: pd.DataFrame, datasets: Sequence[str] | None = None
                 ) -> pd.DataFrame:
    """``aggregate`` plus dataset "average" rows: the mean over datasets of the means,
    for a method and shots only where every dataset has that cell (an average over
    fewer datasets would not compare with the others). Its std is the std of that
    average, sqrt(sum of variances) / datasets, taking the datasets' seed-to-seed
    noise as independent; NaN where any dataset's std is. ``datasets``: those to
    average over (default: all in ``aggregate``)."""
    rows = aggregate[aggregate["dataset"] != AVERAGE]
    if datasets is not None:
        rows = rows[rows["dataset"].isin(datasets)]
    n_datasets = rows["dataset"].nunique() if datasets is None else len(set(datasets))
    complete = rows.groupby(["method", "shots"], sort=False).filter(
        lambda g: g["dataset"].nunique() == n_datasets)
    if complete.empty:
        return rows
    average = complete.groupby(["method", "shots"], sort=False).agg(
        mean=("mean", "mean"),
        std=("std", lambda s: np.sqrt((s**2).sum(skipna=False)) / len(s)),
        n_seeds=("n_seeds", "min"),
    ).reset_index().assign(dataset=AVERAGE)
    return pd.concat([rows, average[rows.columns]], ignore_index=True)


def _mean_std(mean: float, std: float, scale: float, decimals: int) -> str:
    if pd.isna(mean):
        return "—"
    if pd.isna(std):
        return f"{mean * scale:.{decimals}f}"
    return f"{mean * scale:.{decimals}f} ± {std * scale:.{decimals}f}"


def paper_table(aggregate: pd.DataFrame, datasets: Sequence[str] | None = None,
                methods: Sequence[str] | None = None, scale: float = 100.0,
                decimals: int = 1) -> pd.DataFrame:
    """Rows: shots (zero-shot first), then method; columns: each dataset and "average",
    each as "mean ± std" in percent (``scale``), std left out where one seed ran; then
    the numbers themselves, unscaled, as "<dataset> mean" and "<dataset> std" columns."""
    datasets = list(datasets or dict.fromkeys(aggregate["dataset"]))
    methods = list(methods or dict.fromkeys(aggregate["method"]))
    full = with_average(aggregate, datasets)
    columns = [*datasets, AVERAGE] if (full["dataset"] == AVERAGE).any() else datasets
    cell = {(r.shots, r.method, r.dataset): (r.mean, r.std) for r in full.itertuples()}
    keys = sorted({(s, m) for s, m, _ in cell if m in methods},
                  key=lambda k: (k[0], methods.index(k[1])))
    table = pd.DataFrame({"method": [m for _, m in keys], "shots": [s for s, _ in keys]})
    for d in columns:
        values = [cell.get((s, m, d), (np.nan, np.nan)) for s, m in keys]
        table[d] = [_mean_std(mean, std, scale, decimals) for mean, std in values]
        table[f"{d} mean"] = [mean for mean, _ in values]
        table[f"{d} std"] = [std for _, std in values]
    display = ["method", "shots", *columns]
    numeric = [c for d in columns for c in (f"{d} mean", f"{d} std")]
    return table[display + numeric]


def paper_markdown(table: pd.DataFrame) -> str:
    """``paper_table``'s display columns as markdown; "—": not run, or not on every
    dataset (average)."""
    shown = [c for c in table.columns if not c.endswith((" mean", " std"))]
    lines = ["| " + " | ".join(shown) + " |",
             "|---|---:|" + "---:|" * (len(shown) - 2)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |"
              for row in table[shown].itertuples(index=False)]
    return "\n".join(lines) + "\n\n" + NOTE + "\n"


def _curve_axes(ax, rows: pd.DataFrame, methods: list[str], title: str) -> None:
    for i, method in enumerate(methods):
        line = rows[rows["method"] == method].sort_values("shots")
        few, zero = line[line["shots"] > 0], line[line["shots"] == 0]
        colour = f"C{i % 10}"
        if len(few):
            ax.errorbar(few["shots"].to_numpy(float), few["mean"].to_numpy(float),
                        yerr=few["std"].to_numpy(float), color=colour, marker="o",
                        markersize=4, capsize=3, label=method)
        for value in zero["mean"]:  # no shots: a level, not a curve
            ax.axhline(value, color=colour, linestyle="--", linewidth=1.2, label=method)
    ax.set_xscale("log", base=2)
    ticks = sorted(set(SHOT_TICKS) | {int(s) for s in rows["shots"] if s > 0})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("shots per class")
    ax.set_ylabel("top-1 accuracy (test)")
    ax.set_title(title)
    ax.grid(alpha=0.3)


def shots_curve_figure(aggregate: pd.DataFrame) -> Figure:
    """Accuracy against shots per dataset and on average (where every dataset has the
    cell), one line per method with ±1 std over seeds; zero-shot dashed."""
    full = with_average(aggregate)
    panels = list(dict.fromkeys(full["dataset"]))
    methods = list(dict.fromkeys(full["method"]))
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(4.2 * columns + 1.8, 3.4 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, panel in zip(axes, panels):
        _curve_axes(ax, full[full["dataset"] == panel], methods, panel)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    unique = {}  # one legend entry per method, whichever panels it appears in
    for ax in axes[:len(panels)]:
        handles, labels = ax.get_legend_handles_labels()
        unique |= {label: handle for label, handle in zip(labels, handles) if label not in unique}
    fig.legend(unique.values(), unique.keys(), loc="outside right upper", fontsize=8)
    fig.suptitle("Accuracy against shots (mean ± std over seeds; dashed: zero-shot)")
    return fig
