"""The hooks say where the rejected-images table went, save it when validation stops the
run, and stop a run whose inputs are missing; the project's config loader is the one the
pipeline registry reads."""

from __future__ import annotations

import pandas as pd
import pytest
from kedro.framework.hooks.manager import _create_hook_manager
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline

# Imported here, not in a test: importing the runner applies conf/logging.yml, which
# replaces the root logger's handlers, caplog's among them.
from kedro.runner import SequentialRunner

from clip_lora_pipeline import project_config
from clip_lora_pipeline.core.images import BadImagesError
from clip_lora_pipeline.datasets import ParquetDataset
from clip_lora_pipeline.hooks import ProjectHooks
from clip_lora_pipeline.pipelines.data.pipeline import for_dataset


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


def _image_folder_run(tmp_path, on_bad_image: str):
    """The data pipeline on an image_folder, with the project's hooks, as `kedro run`."""
    params = {
        "params:dataset_configs.photos": {"source": "image_folder",
                                          "root": str(tmp_path / "photos")},
        "params:download": {}, "params:validation": {"on_bad_image": on_bad_image},
        "params:split": {}, "params:shots": 1, "params:val_shots": None,
        "params:few_shot_seed": 0,
    }
    catalog = DataCatalog({name: MemoryDataset(value) for name, value in params.items()})
    rejected = tmp_path / "out" / "rejected_images.parquet"
    catalog["photos.rejected_images"] = ParquetDataset(filepath=str(rejected))
    hooks = _create_hook_manager()
    hooks.register(ProjectHooks())
    return lambda: SequentialRunner().run(for_dataset("photos"), catalog, hooks), rejected


def test_a_class_without_readable_images_stops_the_run_after_saving_the_table(
    tmp_path, make_image, caplog
):
    make_image(tmp_path / "photos/tabby_cat/1.jpg")
    for name in ("1.jpg", "2.png"):
        (tmp_path / "photos/golden_retriever" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "photos/golden_retriever" / name).write_bytes(b"\xff\xd8\xff" + b"x" * 50)
    run, rejected = _image_folder_run(tmp_path, "skip")
    with pytest.raises(BadImagesError) as error:
        run()
    assert f"{tmp_path / 'photos/golden_retriever'} (class 'golden retriever')" in str(
        error.value)
    table = pd.read_parquet(rejected)
    assert table["path"].tolist() == ["golden_retriever/1.jpg", "golden_retriever/2.png"]
    assert table["reason"].str.startswith("truncated or corrupt image").all()
    assert f"2 rejected image(s) are listed in photos.rejected_images ({rejected})" in caplog.text


def test_fail_mode_saves_the_table_before_the_run_stops(tmp_path, make_image):
    make_image(tmp_path / "photos/cat/1.jpg")
    make_image(tmp_path / "photos/dog/2.jpg")
    (tmp_path / "photos/dog/empty.jpg").write_bytes(b"")
    run, rejected = _image_folder_run(tmp_path, "fail")
    with pytest.raises(BadImagesError, match="1 of 3 images"):
        run()
    assert pd.read_parquet(rejected)["path"].tolist() == ["dog/empty.jpg"]


def test_a_failed_save_does_not_hide_the_nodes_error(tmp_path, caplog):
    class Broken(ParquetDataset):
        def save(self, data):
            raise OSError("disk full")

    catalog = DataCatalog({"x.rejected_images": Broken(filepath=str(tmp_path / "r.parquet"))})
    [node] = Pipeline([Node(lambda m: (m, m), "manifest", ["images", "rejected_images"])],
                      namespace="x").nodes
    error = BadImagesError("stop", pd.DataFrame({"path": ["a.jpg"]}))
    ProjectHooks().on_node_error(error, node, catalog)
    assert "Could not save the rejected-images table to x.rejected_images" in caplog.text
    assert "disk full" in caplog.text
