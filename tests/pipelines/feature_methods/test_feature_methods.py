"""Every registered method on cached features, through the pipeline's node, on the
smoke profile's generated shapes encoded by the fixed tiny random model: it learns, it
never lets the test split choose anything, and it round-trips through its artifact."""

from __future__ import annotations

import numpy as np
import pytest

from clip_lora_pipeline.core.manifest import class_table
from clip_lora_pipeline.core.methods.registry import FEATURE_METHODS, from_artifact
from clip_lora_pipeline.core.models import TINY_MODEL
from clip_lora_pipeline.core.splits import sample_few_shot
from clip_lora_pipeline.pipelines.feature_methods.nodes import (
    encode_views,
    fit_feature_method,
)
from clip_lora_pipeline.pipelines.zero_shot import nodes as zero_shot_nodes
from tests.conftest import synthetic_pools

MODEL = {"name": TINY_MODEL, "pretrained": None, "checkpoint": None}
RUNTIME = {"device": "cpu", "precision": "auto", "batch_size": 64, "num_workers": 0}
SHOTS, SEEDS, VIEWS = 16, (1, 2, 3), {"n_views": 4}
# Fast settings where a method's defaults train for long; the kinds are all registered ones.
FAST = {"tip_adapter_f": {"train_epoch": 5}, "clap": {"epochs": 50}}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Embeddings of the pools and test split, and the zero-shot classifier."""
    # 50 per class: the hash split (seed 0) leaves every class >= 25 train and >= 5 val
    # images for the 16 and 4 sampled; 32 leaves a class 13 train and 3 val images.
    dataset, manifest, train_pool, val_pool, test = synthetic_pools(
        tmp_path_factory.mktemp("shapes"), 50, num_classes=6, fractions=(0.6, 0.15, 0.25))
    encode = zero_shot_nodes.encode_test
    tables = {name: encode(frame, dataset, MODEL, RUNTIME)
              for name, frame in (("train", train_pool), ("val", val_pool), ("test", test))}
    classifier = zero_shot_nodes.text_classifier(class_table(manifest), dataset, "simple", MODEL,
                                                  RUNTIME)
    return dataset, manifest, tables, classifier


def _cell(shapes, seed):
    """The cell's train/val embeddings and views, sampled as the few-shot node does."""
    dataset, _, tables, _ = shapes
    train = sample_few_shot(tables["train"], SHOTS, seed, "train").reset_index(drop=True)
    val = sample_few_shot(tables["val"], 4, seed, "val").reset_index(drop=True)
    views = encode_views(train[["path", "label", "class_name"]], dataset, MODEL, RUNTIME,
                         VIEWS, seed=seed)
    return train, val, views


def _fit(shapes, kind, cell, test=None):
    _, manifest, tables, classifier = shapes
    train, val, views = cell
    method = FEATURE_METHODS[kind]
    return fit_feature_method(
        train, val, tables["test"] if test is None else test, class_table(manifest),
        {"method": kind, **FAST.get(kind, {})}, name=kind, shots=SHOTS, seed=1,
        classifier=classifier if method.uses_text else None,
        train_views=views if method.uses_views else None)


@pytest.fixture(scope="module")
def cells(shapes):
    return {seed: _cell(shapes, seed) for seed in SEEDS}


@pytest.mark.parametrize("kind", sorted(FEATURE_METHODS))
def test_method_learns_beyond_zero_shot_and_round_trips(shapes, cells, kind):
    _, _, tables, classifier = shapes
    zero_shot, *_ = zero_shot_nodes.zero_shot(tables["test"], classifier)
    top1 = []
    for seed in SEEDS:
        artifact, metrics, _, predictions = _fit(shapes, kind, cells[seed])
        top1.append(metrics["top1"])
        assert metrics["method"] == kind
        assert metrics["trainable_parameters"] > 0 or kind == "tip_adapter"  # training-free
        method, fitted, classes = from_artifact(artifact)
        x = np.stack(tables["test"]["embedding"].to_numpy())
        predicted = np.asarray(classes)[method.logits(fitted, x).argmax(1)]
        assert predicted.tolist() == predictions["predicted_class"].tolist()
    # The tiny random model's zero-shot is near chance; its image features still
    # separate the shapes, which every method must use (mean over three samples).
    assert np.mean(top1) > zero_shot["top1"] + 0.15, (top1, zero_shot["top1"])


@pytest.mark.parametrize("kind", sorted(FEATURE_METHODS))
def test_test_labels_never_choose_anything(shapes, cells, kind):
    """Permute the test labels: every selection and every fitted array stays the same."""
    _, _, tables, _ = shapes
    test = tables["test"]
    order = np.random.default_rng(0).permutation(len(test))
    shuffled = test.assign(label=test["label"].to_numpy()[order],
                           class_name=test["class_name"].to_numpy()[order])
    first, metrics, _, _ = _fit(shapes, kind, cells[1])
    second, permuted, _, _ = _fit(shapes, kind, cells[1], test=shuffled)
    assert permuted["selected"] == metrics["selected"]
    assert permuted["val_search"] == metrics["val_search"]
    for name, tensor in first["tensors"].items():
        np.testing.assert_array_equal(second["tensors"][name].numpy(), tensor.numpy())


def test_the_cell_seed_seeds_training_unless_the_entry_sets_one(shapes, cells):
    _, manifest, tables, classifier = shapes
    train, val, views = cells[1]

    def fit(cell_seed, **entry):
        return fit_feature_method(train, val, tables["test"], class_table(manifest),
                                  {"method": "tip_adapter_f", "train_epoch": 2, **entry},
                                  name="f", shots=SHOTS, seed=cell_seed, classifier=classifier,
                                  train_views=views)

    (first, one, _, _), (second, two, _, _) = fit(1), fit(2)
    assert (one["seed"], two["seed"]) == (1, 2)
    assert not np.array_equal(first["tensors"]["keys"].numpy(), second["tensors"]["keys"].numpy())
    assert fit(2, seed=7)[1]["seed"] == 7
