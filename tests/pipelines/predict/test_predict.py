"""The predict pipeline on generated shapes with the tiny random model: it finds the new
images and lists the unreadable ones, and each kind of model predicts exactly what that
model's own evaluation predicted for the same images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from clip_lora_pipeline import project_config
from clip_lora_pipeline.core.cells import Cell
from clip_lora_pipeline.core.manifest import class_table
from clip_lora_pipeline.core.methods.registry import FEATURE_METHODS
from clip_lora_pipeline.core.models import TINY_MODEL
from clip_lora_pipeline.core.predict import PredictSettings, find_images, top_k_table
from clip_lora_pipeline.datasets import CSVDataset, ParquetDataset, SafetensorsDataset
from clip_lora_pipeline.pipeline_registry import register_pipelines
from clip_lora_pipeline.pipelines.feature_methods.nodes import (
    encode_views,
    fit_feature_method,
)
from clip_lora_pipeline.pipelines.lora import nodes as lora_nodes
from clip_lora_pipeline.pipelines.predict import nodes
from clip_lora_pipeline.pipelines.predict.pipeline import for_parameters
from clip_lora_pipeline.pipelines.zero_shot import nodes as zero_shot_nodes
from tests.conftest import synthetic_splits

MODEL = {"name": TINY_MODEL, "pretrained": None, "checkpoint": None}
RUNTIME = {"device": "cpu", "precision": "auto", "batch_size": 16, "num_workers": 0}
LORA = {"method": "lora", "lr": 5e-3, "max_steps": 6, "batch_size": 8, "eval_every": 3,
        "checkpoint_every": 3, "crop_scale": [0.5, 1.0],
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1}}
FEATURES = sorted(FEATURE_METHODS)  # every method on cached features, by its kind's name
KINDS = ("zero_shot", *FEATURES, "lora")
PROBES = ["linear_probe", "text_init_head"]
# Short trainings where a method's defaults train for long.
FAST = {"tip_adapter_f": {"train_epoch": 5}, "clap": {"epochs": 50}}
CELL = Cell(shots=3, seed=1)
COLUMNS = ["file", "predicted_class", "confidence", "class_1", "prob_1", "class_2", "prob_2",
           "class_3", "prob_3"]  # top_k: 3


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    # 16 per class: the hash split (seed 0) leaves every class >= 6 train and >= 3 val
    # images for the 3 and 2 sampled; 10 leaves a class 1 val image.
    return synthetic_splits(tmp_path_factory.mktemp("shapes"), images_per_class=16, shots=3)


@pytest.fixture(scope="module")
def models(shapes, tmp_path_factory):
    """Each kind of model with its own evaluation's predictions on the test split."""
    dataset, manifest, train, val, test = shapes
    classes = class_table(manifest)
    train_emb, val_emb = zero_shot_nodes.encode_few_shot(train, val, dataset, MODEL, RUNTIME)
    test_emb = zero_shot_nodes.encode_test(test, dataset, MODEL, RUNTIME)
    classifier = zero_shot_nodes.text_classifier(classes, dataset, "simple", MODEL, RUNTIME)
    _, _, zero_shot_predictions = zero_shot_nodes.zero_shot(test_emb, classifier)
    views = encode_views(train, dataset, MODEL, RUNTIME, {"n_views": 2}, seed=1)
    features = {}
    for kind in FEATURES:
        method = FEATURE_METHODS[kind]
        artifact, _, _, predictions = fit_feature_method(
            train_emb, val_emb, test_emb, classes, {"method": kind, **FAST.get(kind, {})},
            name=kind, shots=3, seed=1, classifier=classifier if method.uses_text else None,
            train_views=views if method.uses_views else None)
        features[kind] = (artifact, predictions)
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    adapter, _, summary = lora_nodes.train_adapter(
        train, val, classes, dataset, MODEL, RUNTIME, 3, LORA, str(checkpoints), name="lora",
        seed=1)
    _, _, lora_predictions = lora_nodes.evaluate_adapter(
        test, adapter, summary, dataset, MODEL, RUNTIME)
    return {
        "zero_shot": (classifier, zero_shot_predictions),
        **features,
        "lora": (adapter, lora_predictions),
    }


def _params(input_path, model="lora", **overrides):
    return {"input": str(input_path), "dataset": "shapes", "model": model,
            "prompt_set": "simple", "top_k": 3, **overrides}


def _assert_matches_evaluation(table: pd.DataFrame, evaluation: pd.DataFrame) -> None:
    """Same predicted class and confidence as the method's own evaluation, per file."""
    expected = evaluation.set_index("path").loc[table["file"]]
    assert table["predicted_class"].tolist() == expected["predicted_class"].tolist()
    np.testing.assert_allclose(table["confidence"], expected["confidence"], rtol=1e-5)
    np.testing.assert_allclose(table["prob_1"], expected["confidence"], rtol=1e-5)
    for i, (classes, top) in enumerate(zip(expected["top5_classes"], expected["top5_probs"])):
        assert table.loc[i, ["class_1", "class_2", "class_3"]].tolist() == list(classes[:3])
        np.testing.assert_allclose(table.loc[i, ["prob_1", "prob_2", "prob_3"]].astype(float),
                                   top[:3], rtol=1e-5)


@pytest.fixture
def messy_folder(tmp_path, shapes, make_image):
    """Copies of four test images (same relative paths, one in a sub-folder) beside a
    corrupt JPEG, an empty file, a text file and hidden files that are not inputs."""
    dataset, *_, test = shapes
    folder = tmp_path / "new_images"
    good = sorted(test["path"].tolist())[:4]
    for path in good:
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(dataset["root"]) / path, folder / path)
    whole = make_image(tmp_path / "whole.jpg", size=(64, 64)).read_bytes()
    (folder / "corrupt.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    make_image(folder / ".thumbnails" / "hidden.jpg")
    return folder, good


# find_images -------------------------------------------------------------------------
def test_folder_gives_readable_images_and_rejects_bad_files_with_reasons(messy_folder):
    folder, good = messy_folder
    images, rejected, root = find_images(folder)
    assert root == folder
    assert images["path"].tolist() == good  # sorted, relative to the folder, recursive
    assert (images["width"] == 32).all() and (images["mode"] == "RGB").all()
    reasons = dict(zip(rejected["path"], rejected["reason"]))
    assert set(reasons) == {"corrupt.jpg", "empty.png", "notes.txt"}  # hidden: skipped
    assert reasons["corrupt.jpg"].startswith("truncated or corrupt image")
    assert reasons["empty.png"] == "empty file (0 bytes)"
    assert reasons["notes.txt"] == "not an image file (unrecognised format)"


def test_single_file_input(messy_folder):
    folder, good = messy_folder
    images, rejected, root = find_images(folder / good[0])
    assert root == (folder / good[0]).parent
    assert images["path"].tolist() == [Path(good[0]).name] and rejected.empty
    images, rejected, _ = find_images(folder / "corrupt.jpg")
    assert images.empty and rejected["path"].tolist() == ["corrupt.jpg"]


def test_missing_input_names_the_path_and_the_parameter(tmp_path):
    with pytest.raises(ValueError, match=r"predict\.input .*nowhere.* does not exist"):
        find_images(tmp_path / "nowhere")


# top_k_table ---------------------------------------------------------------------------
def test_top_k_table_ranks_classes_with_softmax_probabilities():
    logits = np.array([[0.0, 2.0, 1.0], [5.0, 5.0, -1.0]])
    table = top_k_table(["a.jpg", "b.jpg"], logits, ["cat", "dog", "owl"], k=2)
    assert table.columns.tolist() == ["file", "predicted_class", "confidence",
                                      "class_1", "prob_1", "class_2", "prob_2"]
    assert table["class_1"].tolist() == ["dog", "cat"]  # a tie ranks the lower label first
    assert table["class_2"].tolist() == ["owl", "dog"]
    expected = np.exp([2.0, 1.0]) / np.exp([0.0, 2.0, 1.0]).sum()
    np.testing.assert_allclose(table.loc[0, ["prob_1", "prob_2"]].astype(float), expected)
    assert (table["confidence"] == table["prob_1"]).all()
    wide = top_k_table(["a.jpg"], logits[:1], ["cat", "dog", "owl"], k=10)  # clipped to 3
    assert wide.filter(like="prob_").sum(axis=1).item() == pytest.approx(1.0)
    empty = top_k_table([], np.empty((0, 3)), ["cat", "dog", "owl"], k=5)
    assert empty.empty and empty.columns.tolist()[-2:] == ["class_3", "prob_3"]


# Parameters ----------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "message"), [
    ({"model": "lroa"}, r"predict\.model is 'lroa'.*\['zero_shot', 'linear_probe', 'text_init_head', 'lora', 'champion', 'challenger'\]"),
    ({"dataset": "flowers"}, r"predict\.dataset is 'flowers'.*\['shapes'\]"),
    ({"model": "zero_shot", "prompt_set": "fancy"}, r"predict\.prompt_set is 'fancy'.*\['simple'\]"),
    ({"top_k": 0}, r"predict\.top_k must be an integer >= 1, got 0"),
    ({"topk": 3}, r"\['predict\.topk'\] are unknown"),
    ({"model": None}, r"\['predict\.model'\] are not set"),
])
def test_bad_parameters_name_the_parameter_the_value_and_the_choices(change, message):
    with pytest.raises(ValueError, match=message):
        PredictSettings.from_params(_params("x", **change), ["shapes"], ["simple"],
                                    PROBES, ["lora"])


def test_prompt_set_is_only_checked_for_zero_shot():
    settings = PredictSettings.from_params(_params("x", prompt_set="fancy"), ["shapes"],
                                           ["simple"], PROBES, ["lora"])
    assert settings.model == "lora" and settings.top_k == 3


def test_registry_adds_predict_outside_the_default_and_defers_parameter_errors(
    monkeypatch, tmp_path,
):
    params = {"datasets": ["shapes"],
              "dataset_configs": {"shapes": {"source": "synthetic", "root": str(tmp_path)}},
              "prompt_sets": {"simple": "simple"}, "adaptation_methods": {"lora": {}},
              "shots": 3, "few_shot_seed": 1, "predict": _params("x", model="zero_shot")}
    monkeypatch.setattr(project_config, "parameters", lambda: params)
    pipelines = register_pipelines()
    predict = pipelines["predict"]
    assert {n.name for n in predict.nodes} == {"predict.find_new_images",
                                               "predict.predict_zero_shot"}
    assert predict.inputs() == {"shapes.text_classifier_simple", "params:predict",
                                "params:model", "params:runtime"}
    assert {n.name for n in predict.nodes if "gpu" in n.tags} == {"predict.predict_zero_shot"}
    assert not {n.name for n in pipelines["__default__"].nodes} & {n.name for n in predict.nodes}

    params["predict"] = _params("x", model="lroa")
    pipelines = register_pipelines()  # the other pipelines still build
    assert "shapes.shots_3_seed_1.train_lora" in {n.name for n in pipelines["lora"].nodes}
    with pytest.raises(ValueError, match=r"predict\.model is 'lroa'"):
        SequentialRunner().run(pipelines["predict"], DataCatalog())


# Nodes ---------------------------------------------------------------------------------
def test_find_new_images_node(messy_folder):
    folder, good = messy_folder
    images, rejected, rejected_csv = nodes.find_new_images(_params(folder))
    assert images["path"].tolist() == good and len(rejected) == 3
    assert rejected_csv is rejected


@pytest.mark.parametrize("kind", KINDS)
def test_each_model_predicts_what_its_own_evaluation_predicted(kind, shapes, models):
    dataset, *_, test = shapes
    artifact, evaluation = models[kind]
    predict = {"zero_shot": nodes.predict_zero_shot, "lora": nodes.predict_adapted}.get(
        kind, nodes.predict_feature_method)
    images = test[["path"]].reset_index(drop=True)
    params = _params(dataset["root"], kind, top_k=5)  # every class of 5
    table, csv_copy = predict(images, artifact, MODEL, RUNTIME, params)
    assert csv_copy is table
    assert table.columns.tolist()[-4:] == ["class_4", "prob_4", "class_5", "prob_5"]
    assert len(table) == len(test)
    np.testing.assert_allclose(table.filter(like="prob_").sum(axis=1), 1.0, atol=1e-9)
    _assert_matches_evaluation(table, evaluation)


def test_the_models_differ_so_the_checks_above_can_tell_them_apart(models):
    confidences = [models[k][1].set_index("path")["confidence"].sort_index() for k in KINDS]
    for i in range(len(KINDS)):
        for j in range(i + 1, len(KINDS)):
            assert not np.allclose(confidences[i], confidences[j], rtol=1e-3), KINDS[i:j + 1]


def test_no_readable_image_gives_an_empty_table_without_loading_a_model(
    models, tmp_path, monkeypatch,
):
    from clip_lora_pipeline.core import predict as core_predict

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded for no image")

    monkeypatch.setattr(core_predict, "load_model", no_model)
    monkeypatch.setattr(core_predict.AdaptedClip, "from_artifact", no_model)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    params = _params(tmp_path)
    images, rejected, _ = nodes.find_new_images(params)
    assert images.empty and rejected["path"].tolist() == ["broken.jpg"]
    table, _ = nodes.predict_adapted(images, models["lora"][0], MODEL, RUNTIME, params)
    assert table.empty and table.columns.tolist() == COLUMNS


# The pipeline --------------------------------------------------------------------------
def _catalog(out: Path, params: dict, models: dict) -> DataCatalog:
    """Stored models as the other pipelines write them; outputs as the catalog has them."""
    classifier = ParquetDataset(filepath=str(out / "text_classifier_simple.parquet"))
    classifier.save(models["zero_shot"][0])
    adapter = SafetensorsDataset(str(out / "adapter.safetensors"))
    adapter.save(models["lora"][0])
    entries = {
        "params:predict": MemoryDataset(params),
        "params:model": MemoryDataset(MODEL),
        "params:runtime": MemoryDataset(RUNTIME),
        "shapes.text_classifier_simple": classifier,
        f"shapes.{CELL.name}.adapted_lora_adapter": adapter,
    }
    for kind in FEATURES:
        entries[f"shapes.{CELL.name}.{kind}_model"] = stored = SafetensorsDataset(
            str(out / f"{kind}_model.safetensors"))
        stored.save(models[kind][0])
    for name in ("images", "rejected_images", "predictions"):
        entries[f"predict.{name}"] = ParquetDataset(filepath=str(out / f"{name}.parquet"))
    for name in ("rejected_images", "predictions"):
        entries[f"predict.{name}_csv"] = CSVDataset(filepath=str(out / f"{name}.csv"),
                                                    save_args={"index": False})
    return DataCatalog(entries)


@pytest.mark.parametrize("kind", KINDS)
def test_pipeline_predicts_the_good_files_and_lists_the_rest(kind, messy_folder, models,
                                                             tmp_path):
    folder, good = messy_folder
    params = _params(folder, kind)
    pipeline = for_parameters({"predict": params}, ["shapes"], {"shapes": ["simple"]},
                              FEATURES, ["lora"], CELL)
    out = tmp_path / "out"
    catalog = _catalog(out, params, models)
    SequentialRunner().run(pipeline, catalog)
    predictions = catalog.load("predict.predictions")
    assert predictions["file"].tolist() == good
    _assert_matches_evaluation(predictions, models[kind][1])
    rejected = catalog.load("predict.rejected_images")
    assert sorted(rejected["path"]) == ["corrupt.jpg", "empty.png", "notes.txt"]
    assert rejected["reason"].notna().all()
    csv = pd.read_csv(out / "predictions.csv")
    assert csv.columns.tolist() == COLUMNS and csv["file"].tolist() == good
    np.testing.assert_allclose(csv["confidence"], predictions["confidence"], rtol=1e-12)
    assert pd.read_csv(out / "rejected_images.csv")["path"].tolist() == rejected["path"].tolist()
