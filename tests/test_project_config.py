"""The registry's view of the parameters: clear errors for malformed lists."""

from __future__ import annotations

import pytest

from clip_lora_pipeline import project_config
from clip_lora_pipeline.pipeline_registry import register_pipelines


def test_dataset_without_config_is_named_with_an_example():
    with pytest.raises(ValueError) as error:
        project_config.dataset_names({"datasets": ["mine"], "dataset_configs": {}})
    assert "['mine']" in str(error.value) and "source: image_folder" in str(error.value)


def test_datasets_must_be_a_list():
    with pytest.raises(ValueError, match="list of names"):
        project_config.dataset_names({"datasets": "flowers102", "dataset_configs": {}})


def test_prompt_sets_and_methods_must_be_mappings():
    with pytest.raises(ValueError, match="prompt_sets"):
        project_config.prompt_set_names({"prompt_sets": ["simple"]})
    assert project_config.adaptation_method_names({"adaptation_methods": {"lora": {}}}) == ["lora"]


def test_registry_builds_namespaces_from_the_active_parameters(monkeypatch):
    params = {
        "datasets": ["a", "b"],
        "dataset_configs": {"a": {}, "b": {}},
        "prompt_sets": {"simple": "simple"},
        "adaptation_methods": {"lora": {}},
    }
    monkeypatch.setattr(project_config, "parameters", lambda: params)
    pipelines = register_pipelines()
    names = {node.name for node in pipelines["__default__"].nodes}
    assert {"a.split", "b.split", "a.zero_shot_simple", "b.train_lora", "a.linear_probe"} <= names
    assert "a.zero_shot_simple" not in {n.name for n in pipelines["linear_probe"].nodes}
    assert {n.name for n in pipelines["lora"].nodes} >= {"a.download", "a.train_lora",
                                                         "a.evaluate_lora", "a.export_lora"}


def test_adaptation_methods_cannot_take_the_names_of_other_methods():
    import pytest

    from clip_lora_pipeline.project_config import adaptation_method_names

    assert adaptation_method_names({"adaptation_methods": {"lora": {}, "bitfit": {}}}) == [
        "lora", "bitfit"]
    with pytest.raises(ValueError, match="zero_shot_simple"):
        adaptation_method_names({"adaptation_methods": {"zero_shot_simple": {}}})
