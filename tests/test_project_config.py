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
    names = project_config.adaptation_method_names
    assert names({"adaptation_methods": {"lora": {}, "bitfit": {}}}) == ["lora", "bitfit"]
    for taken in ("zero_shot_simple", "linear_probe", "text_init_head"):
        with pytest.raises(ValueError, match=taken):
            names({"adaptation_methods": {taken: {}}})


HEAD_PARAMS = {
    "datasets": ["a"], "dataset_configs": {"a": {}},
    "prompt_sets": {"simple": "simple", "ensemble": "ensemble"}, "adaptation_methods": {},
}


def test_text_init_head_runs_with_its_prompt_sets_classifier_and_is_reported(monkeypatch):
    params = {**HEAD_PARAMS, "text_init_head": {"enabled": True, "prompt_set": "ensemble"}}
    monkeypatch.setattr(project_config, "parameters", lambda: params)
    pipelines = register_pipelines()
    probe_nodes = {n.name: n for n in pipelines["linear_probe"].nodes}
    # the linear_probe pipeline alone makes the classifier it starts from, and no other
    assert {"a.text_init_head", "a.text_classifier_ensemble"} <= set(probe_nodes)
    assert "a.text_classifier_simple" not in probe_nodes
    assert "a.text_classifier_ensemble" in probe_nodes["a.text_init_head"].inputs
    reporting = {n.name for n in pipelines["reporting"].nodes}
    assert "a.report_confusion_text_init_head" in reporting
    assert "a.text_init_head" in {n.name for n in pipelines["__default__"].nodes}


@pytest.mark.parametrize("head", [None, {"enabled": False, "prompt_set": "simple"}])
def test_text_init_head_can_be_left_out(monkeypatch, head):
    params = {**HEAD_PARAMS, **({"text_init_head": head} if head else {})}
    monkeypatch.setattr(project_config, "parameters", lambda: params)
    names = {n.name for p in register_pipelines().values() for n in p.nodes}
    assert not any("text_init_head" in n for n in names)
    assert "a.linear_probe" in names


def test_text_init_head_names_a_prompt_set_that_exists():
    params = {**HEAD_PARAMS, "text_init_head": {"prompt_set": "fancy"}}
    with pytest.raises(ValueError, match=r"'text_init_head.prompt_set' is 'fancy'.*"
                                         r"\['simple', 'ensemble'\].*enabled: false"):
        project_config.text_init_head_prompt_set(params)
    with pytest.raises(ValueError, match=r"'text_init_head' must map settings"):
        project_config.text_init_head_prompt_set({**HEAD_PARAMS, "text_init_head": True})
