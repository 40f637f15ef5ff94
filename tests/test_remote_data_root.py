"""End to end: the smoke profile (``--env smoke``) with its ``data_root`` on fsspec's
in-process ``memory://`` filesystem (and on S3 served by moto, where it is installed),
in a KedroSession of this process (memory:// is per process). Every stage of ``kedro
run`` runs (data, zero-shot, feature methods, adaptation, reports), with fewer methods
and steps than the smoke profile so that it takes seconds. Its outputs, the embedding store, validation cache, checkpoints and
fingerprint records are read back from there, nothing is written under the
project's data/ but the run's log, and a second run reuses every node."""

from __future__ import annotations

import io
import json
import uuid

import fsspec
import pandas as pd
import pytest

from clip_lora_pipeline.core import storage
from clip_lora_pipeline.runner import FingerprintRunner
from tests.conftest import copy_project
from tests.object_stores import use_s3_server

CELL = "shots_8_seed_1"
MODEL = "clip-lora-tiny__random"
# What the test trims from conf/smoke (same keys, replaced whole in that environment).
FEATURE_METHODS = """feature_methods:
  linear_probe: {method: linear_probe, c_steps: 3}
  clap: {method: clap, epochs: 5}
augmented_views:
  n_views: 2
  crop_scale: [0.5, 1.0]
"""
ADAPTATION = """adaptation_methods:
  lora:
    method: lora
    lr: 5.0e-3
    max_steps: 4
    batch_size: 8
    eval_every: 2
    checkpoint_every: 2
    lora: {r: 2, alpha: 4}
"""
PROMPTS = "prompt_sets:\n  simple: simple\n"


def _run(project) -> dict:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, env="smoke") as session:
        session.run(runner=FingerprintRunner())
        root = session.load_context().config_loader["globals"]["data_root"]
    return json.loads(storage.read_bytes(f"{root}/.fingerprints/_last_run.json"))


@pytest.fixture(scope="module", params=["memory", "s3"])
def remote(request, tmp_path_factory):
    """(project, data root, the first run's and the second run's _last_run.json), with
    the data root on memory:// or, where moto is installed, on a local S3 server."""
    project = copy_project(tmp_path_factory.mktemp("remote"))
    smoke = project / "conf" / "smoke"
    (smoke / "parameters_feature_methods.yml").write_text(FEATURE_METHODS)
    (smoke / "parameters_lora.yml").write_text(ADAPTATION)
    (smoke / "parameters_prompts.yml").write_text(PROMPTS)
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "s3":
            root = use_s3_server(patch, request.getfixturevalue("s3_endpoint")) + "/data"
        else:
            root = f"memory:///smoke-{uuid.uuid4().hex[:8]}/data"
        (smoke / "globals.yml").write_text((smoke / "globals.yml").read_text()
                                           + f"\ndata_root: {root}\n")
        patch.chdir(project)
        first = _run(project)
        second = _run(project)
        yield project, root, first, second
    if request.param == "memory":
        fsspec.filesystem("memory").rm(storage.filesystem_for(root)[1].rsplit("/", 1)[0],
                                       recursive=True)


def _parquet(location: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(location)))


def test_every_output_is_written_to_the_data_root_and_read_back(remote):
    project, root, first, _ = remote
    assert first["ran"] and "synthetic.encode_test" in first["ran"]
    assert all(path.startswith(root.split("://")[0] + "://") for path in first["files"])
    test = _parquet(f"{root}/03_primary/synthetic/test.parquet")
    assert len(_parquet(f"{root}/04_feature/synthetic/{MODEL}/test_embeddings.parquet")) == len(test)
    results = f"{root}/07_model_output/synthetic/{MODEL}/{CELL}"
    for method in ("linear_probe", "clap", "lora"):
        metrics = json.loads(storage.read_bytes(f"{results}/{method}/metrics.json"))
        assert metrics["n_images"] == len(test) and 0 <= metrics["top1"] <= 1
    assert len(_parquet(f"{results}/lora/history.parquet")) == 4
    models = f"{root}/06_models/synthetic/{MODEL}/{CELL}/lora"
    assert {"adapter.safetensors", "merged_open_clip.safetensors"} <= set(storage.listdir(models))
    report = storage.read_bytes(f"{root}/08_reporting/{MODEL}/{CELL}/report_synthetic.html")
    assert b"<img src=\"data:image/jpeg;base64," in report  # thumbnails read from the data root
    # nothing under the project's own data/ but the log folder
    assert {p.relative_to(project / "data").parts[0]
            for p in (project / "data").rglob("*") if p.is_file()} <= {"09_logs"}


def test_the_stores_checkpoints_and_images_are_there_too(remote):
    _, root, _, _ = remote
    assert storage.files_under(f"{root}/01_raw/synthetic")  # generated there
    assert any(name.endswith(".safetensors") for folder in
               storage.listdir(f"{root}/04_feature/embedding_store")
               for name in storage.listdir(f"{root}/04_feature/embedding_store/{folder}"))
    assert storage.files_under(f"{root}/02_intermediate/validation_cache")
    runs = storage.listdir(f"{root}/06_models/checkpoints")
    assert len(runs) == 1 and storage.exists(f"{root}/06_models/checkpoints/{runs[0]}/last/CURRENT")


def test_a_second_run_reuses_every_node_from_the_records_there(remote):
    _, root, first, second = remote
    assert second["ran"] == [] and sorted(second["reused"]) == sorted(first["ran"])
    assert second["up_to_date"]
    records = storage.listdir(f"{root}/.fingerprints")
    assert "_last_run.json" in records and len(records) > len(first["ran"])


def test_the_quick_check_keeps_its_file_beside_the_records(remote):
    from clip_lora_pipeline.quick_check import QuickCheck

    project, root, _, _ = remote
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        check = QuickCheck({"env": "smoke"})
        assert str(check.folder) == str(storage.data_path(f"{root}/.fingerprints"))
        check.save()  # the last run left every node up to date
        assert storage.exists(f"{root}/.fingerprints/_quick_check.json")
        assert QuickCheck({"env": "smoke"}).unchanged()
