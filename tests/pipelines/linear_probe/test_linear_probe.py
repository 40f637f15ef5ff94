"""Linear probe: picks C on val, refits, and classifies separable embeddings."""

from __future__ import annotations

import numpy as np
import pandas as pd

from clip_lora_pipeline.core.embed import embeddings_table
from clip_lora_pipeline.core.linear_probe import fit_linear_probe
from clip_lora_pipeline.core.manifest import make_manifest
from clip_lora_pipeline.pipelines.linear_probe.nodes import linear_probe

NAMES = ["cat", "dog", "owl", "fox", "elk"]


def _clusters(n_per_class, seed, dim=32, spread=0.6):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(size=(len(NAMES), dim))
    labels = np.repeat(np.arange(len(NAMES)), n_per_class)
    x = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels



def test_probe_separates_clusters_and_reports_the_search():
    train_x, train_y = _clusters(8, seed=1)
    val_x, val_y = _clusters(4, seed=2)
    test_x, test_y = _clusters(40, seed=3)
    probe = fit_linear_probe(train_x, train_y, val_x, val_y, n_classes=5)
    accuracy = (probe.logits(test_x).argmax(1) == test_y).mean()
    assert accuracy > 0.9
    assert probe.C in set(probe.search["C"]) and len(probe.search) == 13
    assert probe.search.loc[probe.search["C"] == probe.C, "val_accuracy"].item() == \
        probe.search["val_accuracy"].max()


def test_two_class_probe_gives_two_logit_columns():
    train_x, train_y = _clusters(6, seed=1)
    keep = train_y < 2
    probe = fit_linear_probe(train_x[keep], train_y[keep], train_x[keep], train_y[keep], n_classes=2)
    assert probe.logits(train_x[keep]).shape == (keep.sum(), 2)
    assert (probe.logits(train_x[keep]).argmax(1) == train_y[keep]).mean() > 0.9


def test_node_returns_model_metrics_and_tables():
    train_x, train_y = _clusters(8, seed=1)
    val_x, val_y = _clusters(4, seed=2)
    test_x, test_y = _clusters(10, seed=3)
    tables = [embeddings_table(make_manifest([f"{s}/{i:03d}.png" for i in range(len(y))], y, NAMES), x)
              for s, x, y in (("tr", train_x, train_y), ("va", val_x, val_y), ("te", test_x, test_y))]
    manifest = pd.concat(tables)[["path", "label", "class_name"]]
    model, metrics, per_class, predictions = linear_probe(*tables, manifest, {"c_steps": 5}, 8)
    assert model["class_name"].tolist() == NAMES
    assert metrics["top1"] > 0.9 and metrics["method"] == "linear_probe"
    assert metrics["trainable_parameters"] == 5 * 32 + 5
    assert len(metrics["val_accuracy_by_C"]) == 5
    assert len(per_class) == 5 and len(predictions) == 50
    assert metrics["fit_seconds"] > 0 and metrics["shots"] == 8
    assert metrics["peak_memory_mb"] > 0
