"""Meta-Adapter on synthetic clustered features: class means on the unit sphere, samples
around them, and text embeddings that are noisy class means, so zero-shot is imperfect
and the few-shot support features carry what the text lacks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from clip_lora_pipeline.core.methods.base import (
    FeatureSet,
    Fitted,
    MethodError,
    accuracy,
)
from clip_lora_pipeline.core.methods.meta_adapter import (
    MetaAdapter,
    MetaAdapterSettings,
    _GatedCrossAttention,
    _Task,
    split_base_new,
)

METHOD = MetaAdapter()
K, D = 10, 64


def _normalise(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def _task(seed: int, shots: int = 16, views: int | None = None):
    """A FeatureSet (train, val) and held-out test features of the same classes."""
    rng = np.random.default_rng(seed)
    means = _normalise(rng.normal(size=(K, D)))

    def sample(per_class: int):
        y = np.repeat(np.arange(K), per_class)
        return _normalise(means[y] + 0.2 * rng.normal(size=(len(y), D))), y

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = sample(shots), sample(10), sample(50)
    text = _normalise(means + 0.3 * rng.normal(size=(K, D)))
    train_views = None if views is None else _normalise(
        train_x[:, None] + 0.05 * rng.normal(size=(len(train_x), views, D)))
    return FeatureSet(train_x, train_y, val_x, val_y, text, 100.0, train_views), test_x, test_y


def _with_untrained_module(fitted: Fitted, seed: int) -> Fitted:
    """The fitted model with its module weights replaced by the initial ones."""
    module = _GatedCrossAttention(D, torch.Generator().manual_seed(seed))
    arrays = dict(fitted.arrays)
    arrays.update({k: v.detach().numpy() for k, v in module.state_dict().items()})
    return Fitted(fitted.method, arrays, dict(fitted.config))


def test_beats_zero_shot_on_held_out_samples():
    gains = []
    for seed in range(3):
        data, test_x, test_y = _task(seed)
        fitted = METHOD.fit(data, MetaAdapterSettings())
        gains.append(accuracy(METHOD.logits(fitted, test_x), test_y)
                     - accuracy(data.zero_shot_logits(test_x), test_y))
        assert list(fitted.search["epoch"]) == [1, 2, 3, 4, 5]
        best = fitted.search.loc[fitted.search["val_accuracy"].idxmax(), "epoch"]
        assert fitted.selected == {"epoch": best}
    assert np.mean(gains) > 0.15


def test_training_improves_on_the_untrained_module():
    # at the official lr (1e-4) 15 steps barely move the weights; a larger lr shows
    # that the training itself, not only the architecture, helps
    settings = MetaAdapterSettings(lr=1e-2, epochs=20)
    gains = []
    for seed in range(3):
        data, test_x, test_y = _task(seed)
        fitted = METHOD.fit(data, settings)
        untrained = _with_untrained_module(fitted, settings.seed)
        gains.append(accuracy(METHOD.logits(fitted, test_x), test_y)
                     - accuracy(METHOD.logits(untrained, test_x), test_y))
    assert np.mean(gains) > 0.015


def test_untrained_module_blends_text_with_the_support_mean():
    # the official init is not an identity: the gate starts near sigmoid(1) and the
    # attention near uniform, so the text moves towards the mean of text and support
    rng = np.random.default_rng(0)
    text = torch.from_numpy(_normalise(rng.normal(size=(K, D))))
    centres = _normalise(rng.normal(size=(K, 1, D)))
    support = torch.from_numpy(_normalise(centres + 0.05 * rng.normal(size=(K, 16, D))))
    module = _GatedCrossAttention(D, torch.Generator().manual_seed(0))
    with torch.no_grad():
        refined = module(text, support, torch.ones(K, 16, dtype=torch.bool))
        gate = torch.sigmoid(module.alpha_proj(text))
    assert float(gate.mean()) == pytest.approx(1 / (1 + math.exp(-1)), rel=0.1)
    token_mean = torch.cat([text[:, None], support], dim=1).mean(dim=1)
    blend = torch.nn.functional.normalize(text + gate * token_mean, dim=-1)
    assert float((refined * blend).sum(dim=1).min()) > 0.999
    assert float((refined * text).sum(dim=1).max()) < 0.9


def test_base_to_new_improves_the_new_classes():
    base, new = split_base_new(K, 0.5)
    gains = []
    for seed in range(3):
        data, test_x, test_y = _task(seed)
        fitted = METHOD.fit(data, MetaAdapterSettings(base_to_new=True))
        rows = np.isin(test_y, new)

        def new_accuracy(logits):  # new-class samples among the new classes
            return accuracy(logits[rows][:, new], test_y[rows] - new[0])

        gains.append(new_accuracy(METHOD.logits(fitted, test_x))
                     - new_accuracy(data.zero_shot_logits(test_x)))
        assert fitted.config["trained_classes"] == len(base)
    assert np.mean(gains) > 0.15


def test_base_to_new_never_trains_on_new_classes():
    data, _, _ = _task(0)
    rng = np.random.default_rng(1)
    train_new, val_new = data.train_y >= K // 2, data.val_y >= K // 2
    train_x, val_x = data.train_x.copy(), data.val_x.copy()
    train_x[train_new] = _normalise(rng.normal(size=(train_new.sum(), D)))
    val_x[val_new] = _normalise(rng.normal(size=(val_new.sum(), D)))
    other = FeatureSet(train_x, data.train_y, val_x, data.val_y, data.text, 100.0)
    settings = MetaAdapterSettings(base_to_new=True, lr=1e-2)
    first, second = METHOD.fit(data, settings), METHOD.fit(other, settings)
    for name in ("q_proj.weight", "k_proj.weight", "alpha_proj.weight", "alpha_proj.bias"):
        np.testing.assert_array_equal(first.arrays[name], second.arrays[name])
    assert first.search.equals(second.search)


def test_split_base_new_takes_the_first_labels_rounding_up():
    base, new = split_base_new(10, 0.5)
    assert list(base) == [0, 1, 2, 3, 4] and list(new) == [5, 6, 7, 8, 9]
    base, new = split_base_new(5, 0.5)
    assert list(base) == [0, 1, 2] and list(new) == [3, 4]
    with pytest.raises(MethodError, match="base_fraction"):
        split_base_new(1, 0.5)


def test_logits_from_a_rebuilt_fitted_equal_the_original():
    data, test_x, _ = _task(0, views=4)
    fitted = METHOD.fit(data, MetaAdapterSettings(lr=1e-2))
    rebuilt = Fitted(fitted.method,
                     {k: torch.from_numpy(np.array(v)).numpy() for k, v in fitted.arrays.items()},
                     json.loads(json.dumps(fitted.config)))
    np.testing.assert_allclose(METHOD.logits(rebuilt, test_x),
                               METHOD.logits(fitted, test_x), rtol=1e-6)


def test_deterministic_for_a_seed():
    data, _, _ = _task(0, views=4)
    first = METHOD.fit(data, MetaAdapterSettings(lr=1e-2))
    again = METHOD.fit(data, MetaAdapterSettings(lr=1e-2))
    other = METHOD.fit(data, MetaAdapterSettings(lr=1e-2, seed=2))
    for name, array in first.arrays.items():
        np.testing.assert_array_equal(array, again.arrays[name])
    assert not np.array_equal(first.arrays["q_proj.weight"], other.arrays["q_proj.weight"])


def test_support_is_the_normalised_mean_of_the_views():
    data, _, _ = _task(0, views=4)
    fitted = METHOD.fit(data, MetaAdapterSettings(epochs=1))
    expected = _normalise(data.train_views.mean(axis=1)).reshape(K, 16, D)
    np.testing.assert_allclose(fitted.arrays["support"], expected, rtol=1e-5, atol=1e-7)
    assert list(fitted.arrays["support_count"]) == [16] * K


def test_a_class_without_shots_keeps_its_text_embedding():
    data, test_x, _ = _task(0)
    keep = (data.train_y != 3) & ((data.train_y != 4) | (np.arange(len(data.train_y)) % 16 < 5))
    uneven = FeatureSet(data.train_x[keep], data.train_y[keep], data.val_x, data.val_y,
                        data.text, 100.0)
    fitted = METHOD.fit(uneven, MetaAdapterSettings(epochs=1))
    assert list(fitted.arrays["support_count"][2:5]) == [16, 0, 5]
    np.testing.assert_allclose(METHOD.logits(fitted, test_x)[:, 3],
                               100.0 * test_x @ data.text[3], rtol=1e-5, atol=1e-4)


def test_training_queries_are_held_out_of_the_support():
    slots = torch.tensor([[0, 1, 2], [3, 4, -1]])
    task = _Task(text=torch.zeros(2, 1), support=torch.zeros(2, 3, 1), slots=slots,
                 queries=torch.zeros(5, 1, 1), query_rows=torch.arange(5),
                 targets=torch.tensor([0, 0, 0, 1, 1]), scale=1.0)

    def mask_of(text, support, mask):
        return mask

    held_out = task.weights(mask_of, torch.tensor([1, 4]))
    assert held_out.tolist() == [[True, False, True], [True, False, False]]
    assert task.weights(mask_of, None).tolist() == [[True, True, True], [True, True, False]]


@pytest.mark.parametrize(("key", "value"), [
    ("lr", 0), ("lr", "fast"), ("eps", -1e-4), ("weight_decay", -0.1), ("epochs", 0),
    ("epochs", 2.5), ("batch_size", 0), ("seed", "one"), ("base_to_new", "yes"),
    ("base_fraction", 0.0), ("base_fraction", 1.0), ("prompt_set", ""),
])
def test_settings_reject_bad_values(key, value):
    with pytest.raises(MethodError, match=key):
        METHOD.settings({key: value})


def test_settings_reject_unknown_keys():
    with pytest.raises(MethodError, match="heads"):
        METHOD.settings({"heads": 2})
