"""Tip-Adapter and Tip-Adapter-F on synthetic clustered features."""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import replace

import numpy as np
import pytest

from clip_lora_pipeline.core.methods.base import (
    FeatureSet,
    Fitted,
    MethodError,
    accuracy,
)
from clip_lora_pipeline.core.methods.tip_adapter import Cache, TipAdapter
from clip_lora_pipeline.core.methods.tip_adapter_f import TipAdapterF, epoch_views
from tests.core.methods.tasks import clip_like_cell, unit

K, D, SHOTS, VIEWS = 10, 64, 16, 4
SEEDS = range(4)


def make_cell(seed: int, views: bool = True) -> tuple[FeatureSet, np.ndarray, np.ndarray]:
    data, test_x, test_y = clip_like_cell(seed, SHOTS, val_shots=10, noise=0.15, views=VIEWS,
                                          view_noise=0.075, text_noise=0.2)
    return (data if views else replace(data, train_views=None)), test_x, test_y


def fit(method, data: FeatureSet, **params) -> Fitted:
    return method.fit(data, method.settings(params))


@pytest.fixture(scope="module")
def accuracies() -> dict[str, float]:
    """Held-out accuracy averaged over seeds: zero-shot, Tip-Adapter, Tip-Adapter-F."""
    scores = {"zero_shot": [], "tip_adapter": [], "tip_adapter_f": []}
    for seed in SEEDS:
        data, test_x, test_y = make_cell(seed)
        scores["zero_shot"].append(accuracy(data.zero_shot_logits(test_x), test_y))
        for method in (TipAdapter(), TipAdapterF()):
            scores[method.name].append(
                accuracy(method.logits(fit(method, data), test_x), test_y))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def test_tip_adapter_beats_zero_shot(accuracies):
    assert accuracies["tip_adapter"] >= accuracies["zero_shot"] + 0.1, accuracies


def test_tip_adapter_f_at_least_as_good_as_tip_adapter(accuracies):
    assert accuracies["tip_adapter_f"] >= accuracies["tip_adapter"], accuracies


@pytest.mark.parametrize(("method", "params"), [(TipAdapter(), {}),
                                                (TipAdapterF(), {"train_epoch": 3})],
                         ids=["tip_adapter", "tip_adapter_f"])
def test_logits_from_stored_arrays_and_config(method, params):
    data, test_x, _ = make_cell(0)
    fitted = fit(method, data, **params)
    rebuilt = Fitted(fitted.method, {k: v.copy() for k, v in fitted.arrays.items()},
                     json.loads(json.dumps(fitted.config)))
    np.testing.assert_allclose(method.logits(rebuilt, test_x),
                               method.logits(fitted, test_x), rtol=1e-6)


def test_cache_vote_is_the_one_hot_product_for_any_key_order():
    rng = np.random.default_rng(0)
    keys, x = unit(rng.normal(size=(30, 8))), unit(rng.normal(size=(5, 8)))
    labels = rng.permutation(np.arange(30) % 4)  # unsorted; class 4 of 5 has no key
    cache = Cache.build(keys, labels, n_classes=5)
    expected = np.exp(-2.5 * (1 - x @ keys.T)) @ np.eye(5)[labels]
    np.testing.assert_allclose(cache.vote(cache.affinity(x), 2.5), expected, rtol=1e-5)


def test_search_is_the_official_grid_and_picks_its_first_best():
    fitted = fit(TipAdapter(), make_cell(1)[0])
    search = fitted.search
    betas, alphas = np.unique(search["beta"]), np.unique(search["alpha"])
    assert len(search) == 200 * 20 and len(betas) == 200 and len(alphas) == 20
    # utils.search_hp with configs/imagenet.yaml: from 0.1 in steps of (scale - 0.1) / step.
    np.testing.assert_allclose(betas[[0, 1, -1]], [0.1, 0.1345, 6.9655], rtol=1e-9)
    np.testing.assert_allclose(alphas[[0, 1, -1]], [0.1, 0.245, 2.855], rtol=1e-9)
    first_best = search.loc[search["val_accuracy"].idxmax()]
    assert fitted.selected == {"beta": first_best["beta"], "alpha": first_best["alpha"]}
    assert fitted.config["beta"] == fitted.selected["beta"]


def test_tip_adapter_f_picks_its_epoch_on_val_and_then_the_grid():
    fitted = fit(TipAdapterF(), make_cell(2)[0], search_step=[10, 5], train_epoch=6)
    epochs = fitted.search[fitted.search["stage"] == "epoch"]
    grid = fitted.search[fitted.search["stage"] == "alpha_beta"]
    assert epochs["epoch"].tolist() == list(range(1, 7))
    assert fitted.selected["epoch"] == epochs.loc[epochs["val_accuracy"].idxmax(), "epoch"]
    assert len(grid) == 50 and (grid["epoch"] == fitted.selected["epoch"]).all()
    best = grid.loc[grid["val_accuracy"].idxmax()]
    assert (fitted.selected["beta"], fitted.selected["alpha"]) == (best["beta"], best["alpha"])
    assert fitted.trainable_parameters == K * SHOTS * D


def test_cache_keys_are_the_averaged_views_or_the_train_features():
    data = make_cell(0)[0]
    with_views = fit(TipAdapter(), data, search_step=[2, 2])
    np.testing.assert_allclose(with_views.arrays["keys"],
                               unit(data.train_views.mean(axis=1)), rtol=1e-5)
    plain = fit(TipAdapter(), dataclasses.replace(data, train_views=None), search_step=[2, 2])
    np.testing.assert_array_equal(plain.arrays["keys"], data.train_x)
    assert plain.trainable_parameters == 0


def test_epochs_cycle_through_the_views():
    data = make_cell(0)[0]
    views = epoch_views(data)
    assert views.shape == (VIEWS, K * SHOTS, D)
    np.testing.assert_array_equal(views[1].numpy(), data.train_views[:, 1])
    plain = epoch_views(dataclasses.replace(data, train_views=None))
    np.testing.assert_array_equal(plain[0].numpy(), data.train_x)


def test_tip_adapter_f_trains_the_keys_deterministically():
    data = make_cell(3)[0]
    # Batches smaller than the 160 train rows, so the shuffle changes what is trained.
    first, again = (fit(TipAdapterF(), data, train_epoch=4, batch_size=32)
                    for _ in range(2))
    other_seed = fit(TipAdapterF(), data, train_epoch=4, batch_size=32, seed=2)
    tip = fit(TipAdapter(), data)
    np.testing.assert_array_equal(first.arrays["keys"], again.arrays["keys"])
    assert not np.allclose(first.arrays["keys"], tip.arrays["keys"], rtol=1e-4)
    assert not np.allclose(first.arrays["keys"], other_seed.arrays["keys"], rtol=1e-6)


@pytest.mark.parametrize("method", [TipAdapter(), TipAdapterF()], ids=lambda m: m.name)
def test_fit_sees_only_train_and_val(method):
    assert list(inspect.signature(method.fit).parameters) == ["data", "settings"]
    assert not [f.name for f in dataclasses.fields(FeatureSet) if "test" in f.name]


def test_empty_val_is_refused():
    data = make_cell(0)[0]
    empty = dataclasses.replace(data, val_x=data.val_x[:0], val_y=data.val_y[:0])
    with pytest.raises(MethodError, match="val"):
        fit(TipAdapter(), empty)


def test_settings_defaults_and_yaml_lists():
    settings = TipAdapterF().settings({"search_scale": [12, 10]})
    assert settings.search_scale == (12, 10) and settings.search_step == (200, 20)
    assert (settings.init_beta, settings.init_alpha, settings.lr) == (1.0, 1.17, 1e-3)
    assert (settings.train_epoch, settings.batch_size, settings.seed) == (20, 256, 1)
    assert settings.prompt_set == "simple"


@pytest.mark.parametrize(("method", "params", "named"), [
    (TipAdapter(), {"alpha": 1.0}, "alpha"),
    (TipAdapter(), {"lr": 1e-3}, "lr"),  # a Tip-Adapter-F setting
    (TipAdapter(), {"search_scale": [0.1, 3]}, "search_scale"),
    (TipAdapter(), {"search_scale": [7]}, "search_scale"),
    (TipAdapter(), {"search_step": [0, 20]}, "search_step"),
    (TipAdapter(), {"search_step": [200, 2.5]}, "search_step"),
    (TipAdapter(), {"search_step": [True, 20]}, "search_step"),
    (TipAdapter(), {"prompt_set": ""}, "prompt_set"),
    (TipAdapterF(), {"init_beta": 0}, "init_beta"),
    (TipAdapterF(), {"lr": -1e-3}, "lr"),
    (TipAdapterF(), {"train_epoch": 0}, "train_epoch"),
    (TipAdapterF(), {"batch_size": 1.5}, "batch_size"),
    (TipAdapterF(), {"seed": "1"}, "seed"),
])
def test_settings_refuse_unknown_and_invalid_values(method, params, named):
    with pytest.raises(MethodError, match=named):
        method.settings(params)
