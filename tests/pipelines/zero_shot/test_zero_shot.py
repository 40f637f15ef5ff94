"""Zero-shot nodes and pipeline on the tiny random model and generated images."""

from __future__ import annotations

import shutil

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from safetensors.torch import save_file

from clip_lora_pipeline.core.images import load_rgb
from clip_lora_pipeline.core.manifest import class_table
from clip_lora_pipeline.core.models import TINY_MODEL
from clip_lora_pipeline.datasets import JSONDataset, ParquetDataset
from clip_lora_pipeline.pipelines.zero_shot import nodes
from clip_lora_pipeline.pipelines.zero_shot.pipeline import for_dataset
from tests.conftest import synthetic_pools

MODEL = {"name": TINY_MODEL, "pretrained": None, "checkpoint": None}
RUNTIME = {"device": "cpu", "precision": "auto", "batch_size": 8, "num_workers": 0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_pools(tmp_path_factory.mktemp("shapes"), 8, image_size=40)


def test_zero_shot_logits_equal_direct_open_clip(data, tmp_path):
    dataset, manifest, train, val, test = data
    # A plain open_clip model (fused attention) with weights saved to a file; the
    # pipeline loads the same file through its own path (unfused, trimmed text).
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL)
    model.eval()
    checkpoint = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    params = {"name": TINY_MODEL, "pretrained": None, "checkpoint": str(checkpoint)}
    test_emb = nodes.encode_test(test, dataset, params, RUNTIME)
    classifier = nodes.text_classifier(class_table(manifest), dataset, "simple", params, RUNTIME)
    logits = nodes.zero_shot_logits(test_emb, classifier)

    tokenizer = open_clip.get_tokenizer(TINY_MODEL)
    root = dataset["root"]
    classes = classifier["class_name"].tolist()
    with torch.inference_mode():
        images = torch.stack([preprocess(load_rgb(f"{root}/{p}")) for p in test["path"]])
        image_features = F.normalize(model.encode_image(images), dim=-1)
        text = F.normalize(model.encode_text(
            tokenizer([f"a photo of a {c}." for c in classes])), dim=-1)
        direct = (model.logit_scale.exp() * image_features @ text.T).numpy()
    assert np.allclose(logits, direct, rtol=1e-4, atol=1e-4 * np.abs(direct).max())
    assert np.allclose(np.stack(test_emb["embedding"]), image_features.numpy(), atol=1e-5)

    metrics, per_class, predictions = nodes.zero_shot(test_emb, classifier)
    assert metrics["top1"] == pytest.approx((logits.argmax(1) == test["label"].to_numpy()).mean())
    assert {"top1", "top5", "mean_per_class_recall", "macro_f1"} <= set(metrics)
    assert len(per_class) == 5 and len(predictions) == len(test)


def test_classifier_uses_class_names_in_label_order(data):
    dataset, manifest, *_ = data
    classifier = nodes.text_classifier(class_table(manifest), dataset, "ensemble", MODEL, RUNTIME)
    expected = manifest.drop_duplicates("label").sort_values("label")["class_name"].tolist()
    assert classifier["class_name"].tolist() == expected
    assert classifier["n_templates"].iloc[0] == 80


def _same_table(table, expected):
    columns = ["path", "label", "class_name"]
    assert table[columns].equals(expected[columns].reset_index(drop=True))
    np.testing.assert_allclose(np.stack(table["embedding"]), np.stack(expected["embedding"]),
                               rtol=1e-5, atol=1e-6)


def test_the_embedding_store_encodes_each_image_content_once(data, tmp_path, monkeypatch):
    dataset, _, train_pool, val_pool, test = data
    store = str(tmp_path / "store")
    plain = nodes.encode_test(test, dataset, MODEL, RUNTIME)
    encoded = []
    encode_images = nodes.encode_images

    def counting(model, manifest, *args, **kwargs):
        encoded.extend(manifest["path"])
        return encode_images(model, manifest, *args, **kwargs)

    monkeypatch.setattr(nodes, "encode_images", counting)
    _same_table(nodes.encode_test(test, dataset, MODEL, RUNTIME, store), plain)
    assert sorted(encoded) == sorted(test["path"])
    encoded.clear()
    _same_table(nodes.encode_test(test, dataset, MODEL, RUNTIME, store), plain)
    assert encoded == []

    # The dataset moved, with a copy of a test image added: all read back by content.
    moved = tmp_path / "moved"
    shutil.copytree(dataset["root"], moved)
    shutil.copy(moved / test["path"].iloc[0], moved / "copy.png")
    dataset = {**dataset, "root": str(moved)}
    duplicate = test.iloc[:1].assign(path="copy.png")
    train, val = train_pool.iloc[:6], pd.concat([val_pool.iloc[:3], duplicate])
    expected = nodes.encode_few_shot(train, val, dataset, MODEL, RUNTIME)
    encoded.clear()
    tables = nodes.encode_few_shot(train, val, dataset, MODEL, RUNTIME, store)
    assert sorted(encoded) == sorted([*train["path"], *val_pool["path"].iloc[:3]])
    for table, reference in zip(tables, expected, strict=True):
        _same_table(table, reference)
    # Another sample from the same pools: only its images not drawn before.
    encoded.clear()
    nodes.encode_few_shot(train_pool.iloc[3:9], val_pool.iloc[:3], dataset, MODEL,
                          RUNTIME, store)
    assert sorted(encoded) == sorted(train_pool["path"].iloc[6:9])


def _catalog(workdir, dataset, manifest, train, val, test):
    entries = {
        "params:dataset_configs.shapes": MemoryDataset(dataset),
        "params:model": MemoryDataset(MODEL),
        "params:runtime": MemoryDataset(RUNTIME),
        "params:prompt_sets.simple": MemoryDataset("simple"),
        "params:embedding_store": MemoryDataset(str(workdir / "store")),
    }
    for name, frame in (("classes", class_table(manifest)), ("train", train), ("val", val),
                        ("test", test)):
        entries[f"shapes.{name}"] = MemoryDataset(frame)
    for name in ("train_embeddings", "val_embeddings", "test_embeddings",
                 "text_classifier_simple", "zero_shot_simple_per_class",
                 "zero_shot_simple_predictions"):
        entries[f"shapes.{name}"] = ParquetDataset(filepath=str(workdir / f"{name}.parquet"))
    entries["shapes.zero_shot_simple_metrics"] = JSONDataset(
        filepath=str(workdir / "metrics.json"))
    return DataCatalog(entries)


def test_pipeline_runs_and_rerunning_zero_shot_never_encodes_images(data, tmp_path, monkeypatch):
    pipeline = for_dataset("shapes", ["simple"])
    catalog = _catalog(tmp_path, *data)
    SequentialRunner().run(pipeline, catalog)
    first = catalog.load("shapes.zero_shot_simple_metrics")
    assert 0.0 <= first["top1"] <= 1.0 and first["n_images"] == len(data[4])

    def no_encoding(*args, **kwargs):
        raise AssertionError("the image encoder ran although embeddings exist")

    monkeypatch.setattr(nodes, "encode_images", no_encoding)
    monkeypatch.setattr(torch.nn.Module, "__call__", no_encoding)
    (tmp_path / "metrics.json").unlink()
    SequentialRunner().run(pipeline.only_nodes_with_tags("zero_shot"), _catalog(tmp_path, *data))
    again = JSONDataset(filepath=str(tmp_path / "metrics.json")).load()
    assert again == first
    predictions = pd.read_parquet(tmp_path / "zero_shot_simple_predictions.parquet")
    assert set(predictions.columns) >= {"path", "true_class", "predicted_class", "confidence"}
