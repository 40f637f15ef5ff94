"""A plain ``kedro run`` is tracked in the copy's own MLflow store (sqlite, never the
project's): flattened parameters, every method's metrics, the report as an artefact,
and each trained model registered once as a version of ``<dataset>-<method>``."""

from __future__ import annotations

import pytest

mlflow = pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from clip_lora_pipeline.core.registry import Registry, file_sha256  # noqa: E402

CELL = "shots_8_seed_1"


@pytest.fixture(scope="module")
def tracked(smoke_project):
    uri = f"sqlite:///{smoke_project / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name("clip_lora_pipeline")
    runs = client.search_runs([experiment.experiment_id], order_by=["start_time ASC"])
    return uri, client, runs[0]


def test_parameters_are_flattened_and_metrics_logged(tracked):
    _, _, run = tracked
    assert run.data.params["adaptation_methods.lora.lora.r"] == "4"
    assert run.data.params["few_shot_seed"] == "1" and run.data.params["shots"] == "8"
    metrics = run.data.metrics
    for method in ("adapted_lora", "adapted_bitfit", "linear_probe", "tip_adapter"):
        assert 0 <= metrics[f"synthetic.{CELL}.{method}_metrics.top1"] <= 1
    assert f"synthetic.{CELL}.adapted_lora_metrics.top1_ci_low" in metrics


def test_the_report_is_an_artefact(tracked):
    _, client, run = tracked
    names = [entry.path for entry in client.list_artifacts(run.info.run_id, "reports")]
    assert "reports/report_synthetic.html" in names


def test_trained_models_are_registered_with_their_data(tracked, smoke_project):
    uri, _, run = tracked
    for name in ("synthetic-lora", "synthetic-bitfit", "synthetic-linear_probe"):
        versions = Registry(name, uri).versions()
        assert len(versions) == 1, name
        tags = versions[0].tags
        assert tags["cell"] == CELL and tags["dataset"] == "synthetic"
        assert any(key.startswith("input.") for key in tags)
        assert versions[0].run_id == run.info.run_id
    lora = Registry("synthetic-lora", uri).versions()[0].tags
    train = smoke_project / "data/05_model_input/synthetic" / CELL / "train.parquet"
    assert lora[f"input.synthetic.{CELL}.train.sha256"] == file_sha256(train)
