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
        "feature_methods": {"linear_probe": {"method": "linear_probe"}},
        "shots": 4, "few_shot_seed": 2,
    }
    monkeypatch.setattr(project_config, "parameters", lambda: params)
    pipelines = register_pipelines()
    names = {node.name for node in pipelines["__default__"].nodes}
    assert {"a.split", "b.split", "a.zero_shot_simple", "b.shots_4_seed_2.train_lora",
            "a.shots_4_seed_2.linear_probe", "shots_4_seed_2.report"} <= names
    assert "a.zero_shot_simple" not in {n.name for n in pipelines["feature_methods"].nodes}
    assert {n.name for n in pipelines["lora"].nodes} >= {
        "a.download", "a.shots_4_seed_2.train_lora", "a.shots_4_seed_2.evaluate_lora",
        "a.shots_4_seed_2.export_lora"}


def test_sweep_runs_every_cell_and_encodes_each_test_split_once(monkeypatch):
    params = {
        "datasets": ["a", "b"], "dataset_configs": {"a": SHAPES, "b": SHAPES},
        "prompt_sets": {"simple": "simple"}, "adaptation_methods": {"lora": {}},
        "feature_methods": {"linear_probe": {"method": "linear_probe"}},
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


FEATURES = {"linear_probe": {"method": "linear_probe"},
            "head": {"method": "text_init_head", "prompt_set": "ensemble"}}
HEAD_PARAMS = {
    "datasets": ["a"], "dataset_configs": {"a": SHAPES}, "shots": 4, "few_shot_seed": 1,
    "prompt_sets": {"simple": "simple", "ensemble": "ensemble"}, "adaptation_methods": {},
    "feature_methods": FEATURES,
}


def test_adaptation_methods_cannot_take_the_names_of_other_methods():
    names = project_config.adaptation_method_names
    params = {"prompt_sets": {"simple": "simple", "ensemble": "ensemble"},
              "feature_methods": FEATURES}
    assert names({**params, "adaptation_methods": {"lora": {}, "bitfit": {}}}) == [
        "lora", "bitfit"]
    for taken in ("zero_shot_simple", "linear_probe", "head"):
        with pytest.raises(ValueError, match=taken):
            names({**params, "adaptation_methods": {taken: {}}})


def test_feature_methods_run_with_their_prompt_sets_classifier_and_are_reported(monkeypatch):
    monkeypatch.setattr(project_config, "parameters", lambda: HEAD_PARAMS)
    pipelines = register_pipelines()
    nodes = {n.name: n for n in pipelines["feature_methods"].nodes}
    # the pipeline makes the classifier the head starts from, and no other
    assert {"a.shots_4_seed_1.head", "a.shots_4_seed_1.linear_probe",
            "a.text_classifier_ensemble"} <= set(nodes)
    assert "a.text_classifier_simple" not in nodes
    assert "a.text_classifier_ensemble" in nodes["a.shots_4_seed_1.head"].inputs
    assert "a.text_classifier_ensemble" not in nodes["a.shots_4_seed_1.linear_probe"].inputs
    # neither trains on augmented views, so none are encoded
    assert not [n for n in nodes if "encode_views" in n]
    reporting = {n.name for n in pipelines["reporting"].nodes}
    assert "shots_4_seed_1.a.report_confusion_head" in reporting
    assert "a.shots_4_seed_1.head" in {n.name for n in pipelines["__default__"].nodes}


def test_feature_methods_can_be_left_out(monkeypatch):
    params = {**HEAD_PARAMS, "feature_methods": {}}
    monkeypatch.setattr(project_config, "parameters", lambda: params)
    names = {n.name for p in register_pipelines().values() for n in p.nodes}
    assert not any("linear_probe" in n or "head" in n for n in names)


def _head(entry):
    return {"feature_methods": {"head": entry}}


@pytest.mark.parametrize(("change", "message"), [
    (_head({"method": "text_init_head", "prompt_set": "fancy"}),
     r"feature_methods\.head\.prompt_set is 'fancy'.*\['simple', 'ensemble'\]"),
    (_head({"method": "text_init_head", "strenght_steps": 3}),
     r"feature_methods\.head: text_init_head\.strenght_steps: unknown; text_init_head takes"),
    (_head({"method": "tip_adaptor"}), r"feature_methods\.head: unknown feature method 'tip_adaptor'"),
    (_head({"prompt_set": "simple"}), r"feature_methods\.head must map 'method'"),
    ({"adaptation_methods": {"lora": {"method": "lora", "lora": {"rank": 4}}}},
     r"adaptation_methods\.lora\.lora\.rank"),
    ({"adaptation_methods": {"lora": {"method": "lora", "lr": "fast"}}},
     r"adaptation_methods\.lora\.lr"),
    ({"adaptation_methods": {"lora": {"method": "lroa"}}}, r"adaptation_methods\.lora\.method"),
    ({"runtime": {"precision": "fp8"}}, r"runtime\.precision must be one of"),
    ({"runtime": {"batchsize": 64}}, r"runtime\.batchsize: unknown; runtime takes"),
    ({"runtime": {"num_workers": -1}}, r"runtime\.num_workers must be 'auto' or an integer"),
    ({"model": {"name": "ViT-B-16", "pretrained": "openai", "quickgelu": True}},
     r"model parameters take"),
])
def test_a_typo_anywhere_fails_when_the_pipelines_are_built(monkeypatch, change, message):
    params = {**HEAD_PARAMS, **change}
    monkeypatch.setattr(project_config, "parameters", lambda: params)
    with pytest.raises(ValueError, match=message):
        register_pipelines()


def test_a_model_changed_with_params_is_refused_because_paths_follow_globals(monkeypatch):
    catalog_model = {"name": "ViT-B-16", "pretrained": "openai", "checkpoint": None}
    params = {**HEAD_PARAMS, "model": {**catalog_model, "name": "ViT-B-32"}}
    monkeypatch.setattr(project_config, "parameters", lambda: params)
    monkeypatch.setattr(project_config, "_catalog_model", lambda: catalog_model)
    with pytest.raises(ValueError, match=r"named by globals\.yml's model .*not with --params"):
        register_pipelines()
    params["model"] = dict(catalog_model)
    register_pipelines()


def test_an_empty_adaptation_entry_means_the_defaults(monkeypatch):
    from clip_lora_pipeline.core.adaptation_settings import adaptation_settings
    from clip_lora_pipeline.pipelines.reporting.nodes import _training_seed

    assert adaptation_settings("bitfit", None) == adaptation_settings("bitfit", {})
    params = {**HEAD_PARAMS, "adaptation_methods": {"bitfit": None}}
    monkeypatch.setattr(project_config, "parameters", lambda: params)
    assert "a.shots_4_seed_1.train_bitfit" in {n.name for n in register_pipelines()["lora"].nodes}
    # the run record's training seed: the entry's own, else the few-shot seed
    assert [_training_seed(e, 3) for e in (None, {"seed": None}, {"seed": 0})] == [3, 3, 0]
