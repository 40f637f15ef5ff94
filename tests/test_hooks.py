"""The hooks say where the rejected-images table went and stop a run whose inputs are
missing; the project's config loader is the one the pipeline registry reads."""

from __future__ import annotations

import pandas as pd
from kedro.io import DataCatalog

from clip_lora_pipeline import project_config
from clip_lora_pipeline.datasets import ParquetDataset
from clip_lora_pipeline.hooks import ProjectHooks


def test_rejected_images_location_is_logged(tmp_path, caplog):
    path = tmp_path / "rejected_images.parquet"
    catalog = DataCatalog({"shapes.rejected_images": ParquetDataset(filepath=str(path))})
    hooks = ProjectHooks()
    hooks.after_catalog_created(catalog)
    rejected = pd.DataFrame({"path": ["a.jpg"], "class_name": ["a"], "reason": ["empty"]})
    hooks.after_dataset_saved("shapes.rejected_images", rejected, None)
    assert f"1 rejected image(s) are listed in shapes.rejected_images ({path})" in caplog.text
    caplog.clear()
    hooks.after_dataset_saved("shapes.rejected_images", rejected.iloc[:0], None)
    hooks.after_dataset_saved("shapes.images", rejected, None)
    assert caplog.text == ""


def test_the_projects_config_loader_is_used_by_the_registry(monkeypatch, tmp_path):
    from clip_lora_pipeline.project_config import ProjectConfigLoader

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "parameters.yml").write_text("datasets: [x]\n")
    monkeypatch.setattr(project_config, "_active_loader", None)
    ProjectConfigLoader(conf_source=str(tmp_path), base_env="base", default_run_env="base")
    assert project_config.parameters() == {"datasets": ["x"]}


def _two_step_project(monkeypatch, tmp_path):
    from kedro.pipeline import Node, Pipeline

    def identity(x):
        return x

    train = Pipeline([Node(identity, "shapes_train", "shapes_adapter", name="train_lora")])
    report = Pipeline([Node(identity, "shapes_adapter", "report", name="report")])
    monkeypatch.setattr("kedro.framework.project.pipelines",
                        {"__default__": train + report, "lora": train, "reporting": report})
    adapter = tmp_path / "adapter.parquet"
    catalog = DataCatalog({"shapes_adapter": ParquetDataset(filepath=str(adapter)),
                           "report": ParquetDataset(filepath=str(tmp_path / "r.parquet"))})
    return report, catalog, adapter


def test_run_with_a_missing_input_stops_and_names_what_makes_it(monkeypatch, tmp_path):
    import pytest

    from clip_lora_pipeline.hooks import MissingInputsError

    report, catalog, adapter = _two_step_project(monkeypatch, tmp_path)
    with pytest.raises(MissingInputsError) as error:
        ProjectHooks().before_pipeline_run({}, report, catalog)
    message = str(error.value)
    assert f"shapes_adapter ({adapter})" in message
    assert "made by node train_lora" in message
    assert "`kedro run --pipelines lora` first" in message


def test_run_with_its_inputs_present_starts(monkeypatch, tmp_path):
    report, catalog, _ = _two_step_project(monkeypatch, tmp_path)
    catalog.save("shapes_adapter", pd.DataFrame({"x": [1]}))
    ProjectHooks().before_pipeline_run({}, report, catalog)
