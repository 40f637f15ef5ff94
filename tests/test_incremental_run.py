"""A plain ``kedro run`` recomputes exactly what changed (the fingerprint runner), on
the smoke environment in a temporary copy of the project: a second run runs nothing, a
new prompt set runs only its own nodes and the reports, a changed ``max_steps`` reruns
that method and its reports, an edited node function reruns it and what depends on it,
a run killed mid-node recomputes that node and nothing before it, and an image rewritten
in place reruns what reads it but no training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from PIL import Image

from tests.conftest import copy_project, run_kedro, write_image

CELL = "shots_8_seed_1"
PROMPTS = """prompt_sets:
  simple: simple
  ensemble: ensemble
  dataset: dataset
  mine: ["a close-up photo of a {}.", "a blurry photo of a {}."]
"""


def _ran(project, *args) -> list[str]:
    result = run_kedro(project, "run", "--env", "smoke", *args, env={"COLUMNS": "300"})
    last = json.loads((project / "data/.fingerprints/_last_run.json").read_text())
    return last["ran"], result.stdout + result.stderr


def _reporting(name: str) -> bool:
    return name.startswith(f"{CELL}.")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("incremental"))
    ran, _ = _ran(project)
    assert "synthetic.encode_test" in ran and f"{CELL}.report" in ran
    return project


def test_a_second_run_runs_nothing(project):
    ran, log = _ran(project)
    assert ran == []
    assert "Nothing to run: all" in log
    assert "checked before loading the pipelines" in log  # quick_check: same command


def test_the_quick_check_gives_way_to_the_full_one_when_a_file_changed(project):
    # an output edited by hand: the full check finds which node made it
    results = project / "data/08_reporting/clip-lora-tiny__random" / CELL
    chart = next(results.glob("accuracy_*.png"))
    chart.write_bytes(chart.read_bytes() + b"\0")
    ran, log = _ran(project)
    assert ran == [f"{CELL}.comparison"], ran
    assert "was changed outside the run" in log
    # a file added to the image folder the parameters name: its listing reruns
    notes = project / "data/01_raw/synthetic/notes.txt"
    notes.write_text("not an image")
    ran, _ = _ran(project)
    assert "synthetic.download" in ran
    notes.unlink()
    ran, _ = _ran(project)
    assert "synthetic.download" in ran
    ran, log = _ran(project)
    assert ran == [] and "checked before loading the pipelines" in log


def test_a_new_prompt_set_runs_only_its_nodes_and_the_reports(project):
    (project / "conf/smoke/parameters_extra_prompts.yml").write_text(PROMPTS)
    ran, log = _ran(project)
    own = {"synthetic.text_classifier_mine", "synthetic.zero_shot_mine"}
    assert own <= set(ran) and f"{CELL}.report" in ran
    assert all(name in own or _reporting(name) for name in ran), ran
    assert not any("encode" in name for name in ran)
    assert "Running synthetic.text_classifier_mine: no record of an earlier run" in log
    report = (project / "data/08_reporting/clip-lora-tiny__random" / CELL / "report_synthetic.html")
    assert "zero_shot_mine" in report.read_text()


def test_a_changed_max_steps_reruns_that_method_and_its_reports(project):
    ran, log = _ran(project, "--params", "adaptation_methods.lora.max_steps=20")
    lora = {f"synthetic.{CELL}.{step}_lora" for step in ("train", "evaluate", "export")}
    assert lora <= set(ran)
    assert all(name in lora or _reporting(name) for name in ran), ran
    assert not any("bitfit" in name for name in ran)
    assert f"Running synthetic.{CELL}.train_lora: parameter" in log


def test_an_edited_node_function_reruns_it_and_what_depends_on_it(project):
    nodes = project / "src/clip_lora_pipeline/pipelines/zero_shot/nodes.py"
    source = nodes.read_text()
    nodes.write_text(source.replace('def zero_shot(', 'def zero_shot(  # edited\n', 1))
    try:
        ran, log = _ran(project, "--params", "adaptation_methods.lora.max_steps=20")
    finally:
        nodes.write_text(source)
    zero_shot = {n for n in ran if n.startswith("synthetic.zero_shot_")}
    assert len(zero_shot) == 4  # simple, ensemble, dataset, mine
    assert all(name in zero_shot or _reporting(name) for name in ran), ran
    assert "its code changed" in log
    # Edited back: the same nodes again; their results are the same bytes as before the
    # edit, so nothing after them reruns.
    ran, _ = _ran(project, "--params", "adaptation_methods.lora.max_steps=20")
    assert set(ran) == zero_shot


def test_a_killed_run_recomputes_that_node_and_nothing_before_it(project):
    args = ["run", "--env", "smoke", "--params", "adaptation_methods.lora.max_steps=200"]
    process = subprocess.Popen(
        [sys.executable, "-m", "kedro", *args], cwd=project, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "COLUMNS": "300"})
    deadline = time.monotonic() + 300
    for line in process.stdout:
        if f"Running synthetic.{CELL}.train_lora" in line or time.monotonic() > deadline:
            process.send_signal(signal.SIGKILL)  # as the training starts
            break
    process.wait(timeout=60)
    assert not (project / "data/.fingerprints/_quick_check.json").exists()
    ran, _ = _ran(project, "--params", "adaptation_methods.lora.max_steps=200")
    assert ran[0] == f"synthetic.{CELL}.train_lora", ran
    assert all("lora" in name or _reporting(name) for name in ran), ran


def test_an_image_rewritten_in_place_reruns_what_reads_it_and_retrains_nothing(project):
    # Only download and validate read the dataset's folder; later nodes see an image's
    # change through the content hashes their input tables carry. A test image rewritten
    # in place (same path, same size) is encoded again and every method scored again,
    # while the few-shot sample, so every training, and the class names stay as they were.
    args = ("--params", "adaptation_methods.lora.max_steps=200")  # as the killed run
    test = pd.read_parquet(project / "data/03_primary/synthetic/test.parquet")
    image = project / "data/01_raw/synthetic" / test["path"].iloc[0]
    with Image.open(image) as old:
        size, fmt = old.size, old.format
    write_image(image, size=size, fmt=fmt, seed=99)
    ran, log = _ran(project, *args)
    assert {"synthetic.validate", "synthetic.split", "synthetic.encode_test",
            f"synthetic.{CELL}.evaluate_lora"} <= set(ran), ran
    assert not any(".train_" in name or "text_classifier" in name for name in ran), ran
    assert "Running synthetic.encode_test: input synthetic.test changed" in log
    ran, _ = _ran(project, *args)
    assert ran == []
