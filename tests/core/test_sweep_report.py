"""The sweep aggregate, the papers' table and the shots curve, on a hand-built table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer

from clip_lora_pipeline.core.report import sweep


def _cells() -> pd.DataFrame:
    rows = [
        # zero-shot: no shots, no seed; repeated as every run of a sweep repeats it
        ("pets", "zero_shot_simple", 0, None, 0.50), ("pets", "zero_shot_simple", 0, None, 0.50),
        ("cars", "zero_shot_simple", 0, None, 0.30),
        ("pets", "lora", 1, 1, 0.60), ("pets", "lora", 1, 2, 0.64), ("pets", "lora", 1, 3, 0.68),
        ("cars", "lora", 1, 1, 0.40), ("cars", "lora", 1, 2, 0.44),
        ("pets", "lora", 2, 1, 0.70), ("cars", "lora", 2, 1, 0.50),
        ("pets", "bitfit", 1, 1, 0.55),  # never ran on cars: no average
    ]
    frame = pd.DataFrame(rows, columns=["dataset", "method", "shots", "seed", "top1"])
    return frame.assign(n_images=100).astype({"seed": "Int64"})


def _row(table: pd.DataFrame, **where) -> pd.Series:
    mask = np.logical_and.reduce([table[k] == v for k, v in where.items()])
    (index,) = np.flatnonzero(mask)
    return table.iloc[index]


def test_aggregate_gives_mean_sample_std_and_seed_count():
    aggregate = sweep.aggregate_cells(_cells())
    assert aggregate.columns.tolist() == ["dataset", "method", "shots", "mean", "std", "n_seeds"]
    pets = _row(aggregate, dataset="pets", method="lora", shots=1)
    assert pets["mean"] == pytest.approx(0.64) and pets["n_seeds"] == 3
    assert pets["std"] == pytest.approx(0.04)  # ddof=1: sqrt((0.04² + 0 + 0.04²) / 2)
    assert _row(aggregate, dataset="cars", method="lora", shots=1)["std"] == pytest.approx(
        np.std([0.40, 0.44], ddof=1))
    single = _row(aggregate, dataset="pets", method="lora", shots=2)
    assert single["n_seeds"] == 1 and math.isnan(single["std"])
    zero = _row(aggregate, dataset="pets", method="zero_shot_simple", shots=0)
    assert (zero["mean"], zero["n_seeds"]) == (pytest.approx(0.5), 1)  # repeat counted once


def test_aggregate_refuses_conflicting_repeats_and_missing_columns():
    cells = _cells()
    cells.loc[1, "top1"] = 0.51
    with pytest.raises(ValueError, match="disagree"):
        sweep.aggregate_cells(cells)
    with pytest.raises(ValueError, match="seed"):
        sweep.aggregate_cells(_cells().drop(columns="seed"))


def test_average_only_where_every_dataset_has_the_cell():
    full = sweep.with_average(sweep.aggregate_cells(_cells()))
    average = full[full["dataset"] == sweep.AVERAGE]
    assert sorted(zip(average["method"], average["shots"])) == [
        ("lora", 1), ("lora", 2), ("zero_shot_simple", 0)]
    lora = _row(average, method="lora", shots=1)
    assert lora["mean"] == pytest.approx((0.64 + 0.42) / 2)
    # std of a mean of two independent datasets: sqrt(s1² + s2²) / 2
    assert lora["std"] == pytest.approx(math.hypot(0.04, np.std([0.40, 0.44], ddof=1)) / 2)
    assert math.isnan(_row(average, method="lora", shots=2)["std"])


def test_paper_table_has_the_papers_layout():
    table = sweep.paper_table(sweep.aggregate_cells(_cells()), datasets=["pets", "cars"],
                              methods=["zero_shot_simple", "lora", "bitfit"])
    assert table.columns.tolist()[:5] == ["method", "shots", "pets", "cars", "average"]
    assert table.columns.tolist()[5:] == ["pets mean", "pets std", "cars mean", "cars std",
                                          "average mean", "average std"]
    assert list(zip(table["shots"], table["method"])) == [
        (0, "zero_shot_simple"), (1, "lora"), (1, "bitfit"), (2, "lora")]
    lora = _row(table, method="lora", shots=1)
    assert (lora["pets"], lora["pets mean"]) == ("64.0 ± 4.0", pytest.approx(0.64))
    assert _row(table, method="lora", shots=2)["pets"] == "70.0"  # one seed: no ± shown
    bitfit = _row(table, method="bitfit", shots=1)
    assert (bitfit["cars"], bitfit["average"]) == ("—", "—")
    assert math.isnan(bitfit["average mean"])
    # a dataset asked for that has no cells: no average anywhere
    table = sweep.paper_table(sweep.aggregate_cells(_cells()), datasets=["pets", "dogs"])
    assert "average" not in table.columns and set(table["dogs"]) == {"—"}


def test_paper_markdown_shows_the_display_columns_only():
    table = sweep.paper_table(sweep.aggregate_cells(_cells()))
    lines = sweep.paper_markdown(table).splitlines()
    assert lines[0] == "| method | shots | pets | cars | average |"
    assert lines[1] == "|---|---:|---:|---:|---:|"
    assert lines[2] == "| zero_shot_simple | 0 | 50.0 | 30.0 | 40.0 |"
    assert len(lines) == 2 + len(table) + 2 and lines[-1] == sweep.NOTE


def test_shots_curve_has_error_bars_log2_shots_and_dashed_zero_shot():
    fig = sweep.shots_curve_figure(sweep.aggregate_cells(_cells()))
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert set(panels) == {"pets", "cars", "average"}
    pets = panels["pets"]
    assert pets.get_xscale() == "log"
    assert [t.get_text() for t in pets.get_xticklabels()] == ["1", "2", "4", "8", "16"]
    bars = [c for c in pets.containers if isinstance(c, ErrorbarContainer)]
    lora = next(c for c in bars if c.get_label() == "lora")
    assert lora.lines[0].get_xdata().tolist() == [1, 2]
    np.testing.assert_allclose(lora.lines[0].get_ydata(), [0.64, 0.70], rtol=1e-9)
    low, high = lora.lines[2][0].get_segments()[0][:, 1]
    assert (low, high) == (pytest.approx(0.60), pytest.approx(0.68))
    dashed = [line for line in pets.lines if line.get_linestyle() == "--"]
    assert [line.get_ydata()[0] for line in dashed] == [pytest.approx(0.5)]
    # bitfit ran on pets only: absent from the average panel
    assert "bitfit" not in [c.get_label() for c in panels["average"].containers]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert sorted(legend) == ["bitfit", "lora", "zero_shot_simple"]
