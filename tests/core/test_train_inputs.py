"""The training input pipeline: the same batches, and so the same trained adapter, for
any number of loader workers and with or without the pixel cache; the cache bounded by
its budget; the validation set preprocessed once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clip_lora_pipeline.core.adaptation_settings import adaptation_settings
from clip_lora_pipeline.core.adapted import AdaptedClip
from clip_lora_pipeline.core.augment import Augmentation
from clip_lora_pipeline.core.batches import EpochBatches
from clip_lora_pipeline.core.model_id import ModelSpec
from clip_lora_pipeline.core.models import TINY_MODEL, load_model
from clip_lora_pipeline.core.runtime import RuntimeSettings
from clip_lora_pipeline.core.train import TrainingLoop
from clip_lora_pipeline.core.train_inputs import (
    InputSettings,
    TrainingBatches,
    Validation,
    fits_cache,
)
from tests.core.conftest import generated_shapes

AUGMENTATION = Augmentation(32, (0.08, 1.0), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    manifest = generated_shapes(root, 4, 10, 48)
    names = manifest.drop_duplicates("label").sort_values("label")["class_name"].tolist()
    return [str(root / p) for p in manifest["path"]], manifest["label"].to_numpy(), names


def _batches(images, start, stop, **settings):
    paths, labels, _ = images
    inputs = TrainingBatches(paths, labels, AUGMENTATION, EpochBatches(len(paths), 16, 5),
                             torch.device("cpu"), InputSettings(**settings))
    return inputs, list(inputs.steps(start, stop))


def test_workers_and_the_pixel_cache_give_identical_batches(images):
    decoded, serial = _batches(images, 0, 6, num_workers=0, pixel_cache_mb=0)
    _, parallel = _batches(images, 0, 6, num_workers=2, pixel_cache_mb=0)
    cache, cached = _batches(images, 0, 6, pixel_cache_mb=64)
    assert not decoded.cached and cache.cached
    assert [step for step, _, _ in serial] == list(range(6))
    for (_, x0, y0), (_, x2, y2), (_, xc, yc) in zip(serial, parallel, cached):
        assert x0.dtype == torch.float32 and x0.shape[1:] == (3, 32, 32)
        torch.testing.assert_close(x2, x0, rtol=0, atol=0)
        torch.testing.assert_close(xc, x0, rtol=0, atol=0)
        assert torch.equal(y2, y0) and torch.equal(yc, y0)
    assert not torch.equal(serial[0][1], serial[1][1])  # steps differ
    _, resumed = _batches(images, 4, 6, num_workers=2, pixel_cache_mb=0)
    for (_, x, _), (_, expected, _) in zip(resumed, serial[4:]):
        torch.testing.assert_close(x, expected, rtol=0, atol=0)


def test_the_cache_refuses_what_exceeds_its_budget(images):
    paths = images[0]
    assert fits_cache(paths, 32, budget_mb=1)  # 40 images of 48 x 48 x 3: 0.3 MB
    assert not fits_cache(paths, 32, budget_mb=0)
    assert not fits_cache(paths * 100, 32, budget_mb=1)


def _adapted(names) -> AdaptedClip:
    entry = {"lr": 5e-3, "max_steps": 6, "batch_size": 8, "eval_every": 3,
             "checkpoint_every": 3, "lora": {"r": 4, "alpha": 8, "dropout": 0.1}}
    return AdaptedClip.from_settings(load_model(ModelSpec(TINY_MODEL)), names,
                                     adaptation_settings("test", entry), seed=1)


def test_workers_and_the_cache_train_the_same_adapter(images):
    paths, labels, names = images
    states, histories = [], []
    for runtime in (RuntimeSettings(num_workers=0, pixel_cache_mb=0),
                    RuntimeSettings(num_workers=2, pixel_cache_mb=0), RuntimeSettings()):
        adapted = _adapted(names)
        result = TrainingLoop(adapted).fit(paths[:24], labels[:24], paths[24:], labels[24:],
                                           adapted.preprocess, 6, runtime=runtime)
        states.append(adapted.state())
        histories.append(result.history)
    for state in states[1:]:
        for name, value in states[0].items():
            torch.testing.assert_close(state[name], value, rtol=0, atol=0)
    for history in histories[1:]:
        np.testing.assert_array_equal(history["loss"], histories[0]["loss"])
        np.testing.assert_array_equal(history["val_accuracy"], histories[0]["val_accuracy"])


def test_validation_is_preprocessed_once_and_scores_as_predict(images, monkeypatch):
    paths, labels, names = images
    adapted = _adapted(names)
    expected = float((adapted.predict(paths, adapted.preprocess).argmax(1) == labels).mean())
    cached = Validation(adapted, paths, labels, adapted.preprocess, 0, budget_mb=64)
    uncached = Validation(adapted, paths, labels, adapted.preprocess, 0, budget_mb=0)
    assert cached.cached and not uncached.cached
    assert cached.accuracy() == uncached.accuracy() == pytest.approx(expected)
    monkeypatch.setattr("clip_lora_pipeline.core.train_inputs.image_loader",
                        lambda *a, **k: pytest.fail("decoded the validation set again"))
    assert cached.accuracy() == pytest.approx(expected)
