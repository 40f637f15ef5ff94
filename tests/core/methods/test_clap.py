"""CLAP (class-adaptive linear probe) on synthetic clustered features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clip_lora_pipeline.core.methods.base import (
    FeatureSet,
    Fitted,
    MethodError,
    accuracy,
)
from clip_lora_pipeline.core.methods.clap import (
    Clap,
    ClapSettings,
    class_multipliers,
    learning_rate,
    training_samples,
)
from tests.core.methods.tasks import clip_like_cell, unit

K, D, VIEWS = 10, 64, 4
SEEDS = range(8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The fits are many tiny steps: on a loaded machine torch's intra-op threads only
    wait on each other (ten times slower), so these tests run single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_cell(seed: int, shots: int) -> tuple[FeatureSet, np.ndarray, np.ndarray]:
    return clip_like_cell(seed, shots, views=VIEWS)


def fit(data: FeatureSet, **params) -> Fitted:
    method = Clap()
    return method.fit(data, method.settings(params))


def held_out(shots: int, **params) -> tuple[float, float]:
    """Mean held-out accuracy over seeds: zero-shot, then the fitted method."""
    zero_shot, fitted = [], []
    for seed in SEEDS:
        data, test_x, test_y = make_cell(seed, shots)
        zero_shot.append(accuracy(data.zero_shot_logits(test_x), test_y))
        fitted.append(accuracy(Clap().logits(fit(data, **params), test_x), test_y))
    return float(np.mean(zero_shot)), float(np.mean(fitted))


def test_sixteen_shots_beat_zero_shot_by_a_clear_margin():
    zero_shot, clap = held_out(16)
    assert clap > zero_shot + 0.1


def test_one_shot_stays_near_zero_shot_where_an_unconstrained_probe_does_not():
    zero_shot, clap = held_out(1)
    _, unconstrained = held_out(1, constraint="none")  # ZS-LP: same init and optimiser
    assert clap > zero_shot - 0.05
    assert clap > unconstrained + 0.15


def test_multipliers_are_the_mean_zero_shot_probability_of_the_true_class():
    text = np.eye(2, 3, dtype=np.float32)
    between = unit(np.array([1.0, 1.0, 0.0]))  # equally close to both prototypes
    x = np.stack([text[0], text[0], text[1], between]).astype(np.float32)
    y = np.array([0, 0, 1, 1])
    lambdas = class_multipliers(x, y, text, 100.0)
    # Class 0: both samples on its prototype (p ~ 1); class 1: one there, one halfway.
    np.testing.assert_allclose(lambdas, [1.0, 0.75], rtol=1e-6)
    assert lambdas[0] > lambdas[1]


def test_multipliers_need_every_class():
    text = np.eye(3, 4, dtype=np.float32)
    with pytest.raises(MethodError, match=r"1 class\(es\).*\[2\]"):
        class_multipliers(text[:2], np.array([0, 1]), text, 100.0)


def test_views_are_the_training_samples_when_given():
    data, _, _ = make_cell(0, 2)
    x, y = training_samples(data)
    assert x.shape == (K * 2 * VIEWS, D)
    np.testing.assert_array_equal(y, np.repeat(data.train_y, VIEWS))
    np.testing.assert_array_equal(x[:VIEWS], data.train_views[0])
    fitted = fit(data)
    assert fitted.config["train_samples"] == K * 2 * VIEWS
    plain = FeatureSet(data.train_x, data.train_y, data.val_x, data.val_y, data.text, 100.0)
    assert fit(plain).config["train_samples"] == K * 2


def test_views_of_the_wrong_shape_are_rejected():
    data, _, _ = make_cell(0, 2)
    bad = FeatureSet(data.train_x, data.train_y, data.val_x, data.val_y, data.text, 100.0,
                     data.train_views[1:])
    with pytest.raises(MethodError, match="train_views"):
        fit(bad)


def test_rebuilt_model_gives_the_same_logits_and_nothing_is_selected():
    data, test_x, _ = make_cell(1, 4)
    fitted = fit(data)
    json.dumps(fitted.config)
    rebuilt = Fitted("clap", {k: v.copy() for k, v in fitted.arrays.items()},
                     json.loads(json.dumps(fitted.config)))
    np.testing.assert_allclose(Clap().logits(rebuilt, test_x),
                               Clap().logits(fitted, test_x), rtol=1e-6)
    assert set(fitted.arrays) == {"weight", "bias"}
    assert fitted.selected == {} and fitted.search is None
    assert fitted.trainable_parameters == K * D


def test_val_is_never_used():
    data, test_x, _ = make_cell(2, 4)
    blind = FeatureSet(data.train_x, data.train_y, np.full_like(data.val_x, np.nan),
                       data.val_y, data.text, 100.0, data.train_views)
    np.testing.assert_array_equal(Clap().logits(fit(blind), test_x),
                                  Clap().logits(fit(data), test_x))


def test_deterministic_for_a_seed():
    data, _, _ = make_cell(3, 16)
    first, again, other = fit(data, seed=5), fit(data, seed=5), fit(data, seed=6)
    np.testing.assert_array_equal(first.arrays["weight"], again.arrays["weight"])
    assert not np.allclose(first.arrays["weight"], other.arrays["weight"], rtol=1e-6)


def test_longer_prototypes_move_less():
    data, _, _ = make_cell(4, 1)
    start = 100.0 * data.text

    def moved(**params) -> float:
        return float(np.linalg.norm(fit(data, **params).arrays["weight"] - start))

    assert moved(prototype_norm=10.0) < 0.5 * moved()


def test_learning_rate_follows_dassl_constant_warmup_then_cosine():
    s = ClapSettings()
    assert learning_rate(0, s) == pytest.approx(1e-5, rel=1e-9)
    assert learning_rate(1, s) == pytest.approx(0.1, rel=1e-9)
    assert learning_rate(151, s) == pytest.approx(0.05, rel=1e-9)
    assert learning_rate(299, s) == pytest.approx(0.05 * (1 + np.cos(np.pi * 298 / 300)),
                                                  rel=1e-9)


@pytest.mark.parametrize(("setting", "value"), [
    ("constraint", "cosine"), ("lr", 0), ("lr", "fast"), ("epochs", 0), ("epochs", 2.5),
    ("batch_size", 0), ("momentum", 1.0), ("warmup_epochs", 300), ("warmup_epochs", -1),
    ("warmup_lr", 0), ("prototype_norm", -1.0), ("seed", True), ("prompt_set", ""),
])
def test_settings_reject_bad_values(setting, value):
    with pytest.raises(MethodError, match=setting):
        Clap().settings({setting: value})


def test_defaults_are_the_official_run():
    s = Clap().settings({"method": "clap"})
    assert (s.constraint, s.lr, s.epochs, s.batch_size, s.momentum, s.warmup_epochs,
            s.warmup_lr, s.prompt_set) == ("l2", 0.1, 300, 256, 0.9, 1, 1e-5, "simple")
