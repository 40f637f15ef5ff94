"""End to end: ``kedro run --env smoke --pipeline sweep`` (shots
[1, 2, 4] x seeds [1, 2] in conf/smoke) in a fresh copy of the project."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import SMOKE_ADAPTATIONS, copy_project, run_kedro

SWEEP = ["run", "--env", "smoke", "--pipeline", "sweep"]
OUT = "data/08_reporting/clip-lora-tiny__random/sweep_shots_1-2-4_seeds_1-2"
TRAINED = ["linear_probe", "text_init_head", "tip_adapter", "tip_adapter_f", "clap",
           "meta_adapter", *SMOKE_ADAPTATIONS]


def _completed(project, node: str) -> int:
    """How many times ``node`` completed, from the runs' log files (data/09_logs)."""
    return sum(line.endswith(f"Completed node: {node}")
               for log in (project / "data/09_logs").glob("*.log")
               for line in log.read_text().splitlines())


def _mtimes(project) -> dict[str, int]:
    return {str(p.relative_to(project)): p.stat().st_mtime_ns
            for p in (project / "data").rglob("*")
            if p.is_file() and not {".fingerprints", "09_logs"} & set(p.parts)}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("sweep"))
    run_kedro(project, *SWEEP)
    return project


@pytest.mark.slow
def test_sweep_runs_every_cell_and_encodes_the_test_split_once(swept):
    cells = [f"shots_{n}_seed_{s}" for n in (1, 2, 4) for s in (1, 2)]
    assert _completed(swept, "synthetic.encode_test") == 1
    for cell in cells:
        assert _completed(swept, f"synthetic.{cell}.encode_few_shot") == 1
        assert _completed(swept, f"synthetic.{cell}.train_lora") == 1
    train = pd.read_parquet(swept / "data/05_model_input/synthetic/shots_2_seed_2/train.parquet")
    assert train.groupby("label").size().tolist() == [2] * 6


@pytest.mark.slow
def test_sweep_aggregates_mean_std_and_seeds(swept):
    aggregate = pd.read_parquet(swept / OUT / "aggregate.parquet")
    trained = aggregate[aggregate["method"].isin(TRAINED)]
    assert set(TRAINED) <= set(aggregate["method"])  # every method is in the sweep's table
    assert sorted(set(trained["shots"])) == [1, 2, 4]
    assert (trained["n_seeds"] == 2).all() and trained["std"].notna().all()
    cells = pd.read_parquet(swept / OUT / "cells.parquet")
    lora_4 = cells[(cells["method"] == "lora") & (cells["shots"] == 4)]["top1"]
    row = trained[(trained["method"] == "lora") & (trained["shots"] == 4)].iloc[0]
    assert row["mean"] == pytest.approx(lora_4.mean(), rel=1e-12)
    assert row["std"] == pytest.approx(lora_4.std(ddof=1), rel=1e-9, abs=1e-12)
    zero_shot = aggregate[aggregate["method"].str.startswith("zero_shot")]
    assert (zero_shot["shots"] == 0).all() and len(zero_shot) == 3
    markdown = (swept / OUT / "table.md").read_text()
    assert "synthetic" in markdown and "average" in markdown and "±" in markdown
    assert (swept / OUT / "accuracy_by_shots.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_second_sweep_recomputes_nothing_and_an_interrupted_cell_resumes(swept):
    before = _mtimes(swept)
    run_kedro(swept, *SWEEP)
    after = _mtimes(swept)
    changed = {k for k in after if before.get(k) != after[k]}
    assert not changed, sorted(changed)  # nothing changed, so nothing reran

    lost = "data/07_model_output/synthetic/clip-lora-tiny__random/shots_4_seed_2/lora"
    for name in ("metrics.json", "predictions.parquet"):
        (swept / lost / name).unlink()
    before = _mtimes(swept)
    run_kedro(swept, *SWEEP)
    after = _mtimes(swept)
    changed = {k for k in after if before.get(k) != after[k]} - {
        k for k in after if k.startswith(OUT)}
    assert changed == {f"{lost}/{n}" for n in ("metrics.json", "per_class.parquet",
                                                "predictions.parquet")}
