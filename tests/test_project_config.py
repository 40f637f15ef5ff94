"""The registry's view of the parameters: clear errors for malformed lists."""

from __future__ import annotations

import pytest

from clip_lora_pipeline import project_config
from clip_lora_pipeline.pipeline_registry import register_pipelines

SHAPES = {"source": "synthetic", "root": "data/01_raw/shapes"}


def test_dataset_without_config_is_named_with_an_example():
    with pytest.raises(ValueError) as error:
        project_config.dataset_names({"datasets": ["mine"], "dataset_configs": {}})
    assert "['mine']" in str(error.value) and "source: image_folder" in str(error.value)


def test_dataset_settings_are_checked_when_the_pipelines_are_built():
    params = {"datasets": ["mine"],
              "dataset_configs": {"mine": {**SHAPES, "protocl": "coop"}}}
    with pytest.raises(ValueError, match=r"dataset_configs\.mine\.protocl: unknown key"):
        project_config.dataset_names(params)


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
        "dataset_configs": {"a": SHAPES, "b": SHAPES},
        "prompt_sets": {"simple": "simple"},
        "adaptation_methods": {"lora": {}},
        "shots": 4, "few_shot_seed": 2,
    }
    monkeypatch.setattr(project_config, "parameters", lambda: params)
    pipelines = register_pipelines()
    names = {node.name for node in pipelines["__default__"].nodes}
    assert {"a.split", "b.split", "a.zero_shot_simple", "b.shots_4_seed_2.train_lora",
            "a.shots_4_seed_2.linear_probe", "shots_4_seed_2.report"} <= names
    assert "a.zero_shot_simple" not in {n.name for n in pipelines["linear_probe"].nodes}
    assert {n.name for n in pipelines["lora"].nodes} >= {
        "a.download", "a.shots_4_seed_2.train_lora", "a.shots_4_seed_2.evaluate_lora",
        "a.shots_4_seed_2.export_lora"}


def test_sweep_runs_every_cell_and_encodes_each_test_split_once(monkeypatch):
    params = {
        "datasets": ["a", "b"], "dataset_configs": {"a": SHAPES, "b": SHAPES},
        "prompt_sets": {"simple": "simple"}, "adaptation_methods": {"lora": {}},
        "shots": 16, "few_shot_seed": 1, "sweep": {"shots": [4, 1], "seeds": [1, 2, 3]},
    }
    monkeypatch.setattr(project_config, "parameters", lambda: params)
    sweep = register_pipelines()["sweep"]
    names = [node.name for node in sweep.nodes]
    cells = [f"shots_{n}_seed_{s}" for n in (1, 4) for s in (1, 2, 3)]
    for dataset in ("a", "b"):
        assert [n for n in names if n.startswith(f"{dataset}.") and "encode_test" in n] == [
            f"{dataset}.encode_test"]
        assert {f"{dataset}.{c}.{step}" for c in cells
                for step in ("few_shot", "train_lora", "evaluate_lora", "linear_probe")} <= set(names)
    # merged exports per cell would only fill the disk; the single-cell report is not made
    assert not [n for n in names if "export_" in n or n.endswith(".report_section")]
    aggregate = {n.name: n for n in sweep.nodes}["sweep.shots_1-4_seeds_1-2-3.collect"]
    assert len(aggregate.inputs) == 2 * (1 + 6 * 2)  # zero-shot + 6 cells x (probe, lora)
    assert "a.shots_4_seed_3.adapted_lora_metrics" in aggregate.inputs


def test_sweep_grid_is_validated():
    from clip_lora_pipeline.core.cells import CellError, SweepSettings

    assert SweepSettings.from_params(None).name == "shots_1-2-4-8-16_seeds_1-2-3"
    for bad, message in (({"shots": 4}, "must be a list"), ({"shots": [0]}, "positive"),
                         ({"seeds": []}, "non-empty"), ({"shots": [2, 2]}, "without repeats"),
                         ({"shot": [1]}, "unknown")):
        with pytest.raises(CellError, match=message):
            SweepSettings.from_params(bad)


def test_dataset_prompt_set_is_skipped_for_a_source_without_templates(caplog):
    params = {"dataset_configs": {"mine": {"source": "image_folder"},
                                  "flowers": {"source": "flowers102"}},
              "prompt_sets": {"simple": "simple", "dataset": "dataset"}}
    with caplog.at_level("INFO"):
        assert project_config.prompt_sets_for(params, "mine") == ["simple"]
    assert "'image_folder' has no dataset templates" in caplog.text
    assert project_config.prompt_sets_for(params, "flowers") == ["simple", "dataset"]


def test_adaptation_methods_cannot_take_the_names_of_other_methods():
    names = project_config.adaptation_method_names
    assert names({"adaptation_methods": {"lora": {}, "bitfit": {}}}) == ["lora", "bitfit"]
    for taken in ("zero_shot_simple", "linear_probe", "text_init_head"):
        with pytest.raises(ValueError, match=taken):
            names({"adaptation_methods": {taken: {}}})


HEAD_PARAMS = {
    "datasets": ["a"], "dataset_configs": {"a": SHAPES}, "shots": 4, "few_shot_seed": 1,
    "prompt_sets": {"simple": "simple", "ensemble": "ensemble"}, "adaptation_methods": {},
}


def test_text_init_head_runs_with_its_prompt_sets_classifier_and_is_reported(monkeypatch):
    params = {**HEAD_PARAMS, "text_init_head": {"enabled": True, "prompt_set": "ensemble"}}
    monkeypatch.setattr(project_config, "parameters", lambda: params)
    pipelines = register_pipelines()
    probe_nodes = {n.name: n for n in pipelines["linear_probe"].nodes}
    # the linear_probe pipeline alone makes the classifier it starts from, and no other
    assert {"a.shots_4_seed_1.text_init_head", "a.text_classifier_ensemble"} <= set(probe_nodes)
    assert "a.text_classifier_simple" not in probe_nodes
    assert "a.text_classifier_ensemble" in probe_nodes["a.shots_4_seed_1.text_init_head"].inputs
    reporting = {n.name for n in pipelines["reporting"].nodes}
    assert "shots_4_seed_1.a.report_confusion_text_init_head" in reporting
    assert "a.shots_4_seed_1.text_init_head" in {n.name for n in pipelines["__default__"].nodes}


@pytest.mark.parametrize("head", [None, {"enabled": False, "prompt_set": "simple"}])
def test_text_init_head_can_be_left_out(monkeypatch, head):
    params = {**HEAD_PARAMS, **({"text_init_head": head} if head else {})}
    monkeypatch.setattr(project_config, "parameters", lambda: params)
    names = {n.name for p in register_pipelines().values() for n in p.nodes}
    assert not any("text_init_head" in n for n in names)
    assert "a.shots_4_seed_1.linear_probe" in names


def test_text_init_head_names_a_prompt_set_that_exists():
    params = {**HEAD_PARAMS, "text_init_head": {"prompt_set": "fancy"}}
    with pytest.raises(ValueError, match=r"'text_init_head.prompt_set' is 'fancy'.*"
                                         r"\['simple', 'ensemble'\].*enabled: false"):
        project_config.text_init_head_prompt_set(params)
    with pytest.raises(ValueError, match=r"'text_init_head' must map settings"):
        project_config.text_init_head_prompt_set({**HEAD_PARAMS, "text_init_head": True})
