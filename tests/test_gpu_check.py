"""benchmarks/gpu_check.sh, in its CPU-safe quick form: every part runs (the smoke
pipeline in bf16 only and only as far as LoRA's evaluation under --quick, the step
benchmark on the tiny model, the loader benchmark on a few generated JPEGs, the
resume-after-kill check, two gloo training processes against one), passes, and is
listed in the summary table, which is written with each part's raw JSON."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import PROJECT_ROOT, write_image

PARTS = ("smoke", "step", "loader", "resume", "ddp")


@pytest.mark.slow
def test_gpu_check_runs_its_cpu_parts_and_tabulates_them(tmp_path):
    images = tmp_path / "images"
    for label in ("cat", "dog"):
        for i in range(4):
            write_image(images / label / f"{i}.jpg", size=(64, 48), seed=i)
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", str(PROJECT_ROOT / "benchmarks/gpu_check.sh"), "--cpu", "--quick",
         "--images", str(images)],
        cwd=tmp_path, env={**os.environ, "OUT": str(out), "KEDRO_DISABLE_TELEMETRY": "1"},
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    summary = (out / "summary.md").read_text()
    assert summary in result.stdout  # printed as well as written
    rows = [line for line in summary.splitlines() if line.startswith("| ")][1:]
    cells = [[c.strip() for c in row.strip("|").split(" | ")] for row in rows]
    assert {c[0] for c in cells} == set(PARTS)
    assert all(c[-1] == "**PASS**" for c in cells), summary
    assert [c[1] for c in cells if c[0] == "smoke"] == ["bf16, cpu"]

    step = json.loads((out / "step_fp32.json").read_text())
    assert step["model"] == "clip-lora-tiny" and step["steps_per_s"] > 0
    assert step["flops_per_step"] > 0 and step["mfu"] is None  # no peak for a CPU
    resume = json.loads((out / "resume.json").read_text())
    assert resume["passed"] and resume["exact"]  # on a CPU: identical
    ddp = json.loads((out / "ddp.json").read_text())  # 2 gloo processes against one
    assert ddp["passed"] and ddp["processes"] == 2 and ddp["resumed_vs_many"]["exact"]
    assert json.loads((out / "smoke_bf16.json").read_text())["lora_metrics"]["n_images"] > 0
    assert json.loads((out / "loader.json").read_text())["new_img_per_s"] > 0
