"""The linear probe: L2-regularised logistic regression (lbfgs) on the cached image
features, C chosen by val accuracy over a log-spaced grid, then refit on train + val
(the CLIP paper's protocol). Also the search-and-refit every linear head here uses."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from clip_lora_pipeline.core.methods.base import (
    FeatureMethod,
    FeatureSet,
    Fitted,
    MethodError,
    check_settings,
    linear_logits,
)

Head = tuple[np.ndarray, np.ndarray]  # weight (classes, dim), bias (classes,)


@dataclass(frozen=True)
class LinearProbeSettings:
    c_min_log10: float = -3
    c_max_log10: float = 3
    c_steps: int = 13
    max_iter: int = 1000

    def __post_init__(self) -> None:
        check_settings("linear_probe", {"c_steps": self.c_steps, "max_iter": self.max_iter},
                       {"c_min_log10": self.c_min_log10, "c_max_log10": self.c_max_log10})
        if self.c_min_log10 > self.c_max_log10:
            raise MethodError("linear_probe: c_min_log10 must be <= c_max_log10.")

    @property
    def grid(self) -> list[float]:
        return sorted(np.logspace(self.c_min_log10, self.c_max_log10, self.c_steps))


def search_and_refit(fit: Callable[[np.ndarray, np.ndarray, float], Head], name: str,
                     grid: Sequence[float], data: FeatureSet) -> tuple[Head, float, pd.DataFrame]:
    """Fit on train for each grid value (in order of preference: the first of equally
    good ones wins), then refit the best on train + val. Returns the head, the chosen
    value and the val accuracy of each candidate."""
    scores = []
    for value in grid:
        weight, bias = fit(data.train_x, data.train_y, float(value))
        predicted = (data.val_x @ weight.T + bias).argmax(axis=1)
        scores.append((float(value), float((predicted == data.val_y).mean())))
    search = pd.DataFrame(scores, columns=[name, "val_accuracy"])
    best = float(search.loc[search["val_accuracy"].idxmax(), name])
    head = fit(np.vstack([data.train_x, data.val_x]),
               np.concatenate([data.train_y, data.val_y]), best)
    return head, best, search


def _logistic(x: np.ndarray, y: np.ndarray, n_classes: int, c: float, max_iter: int) -> Head:
    model = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    # Classes missing from the fit data keep a -inf-like bias, so they are never predicted.
    weight = np.zeros((n_classes, x.shape[1]), dtype=np.float32)
    bias = np.full(n_classes, -1e9, dtype=np.float32)
    if len(model.classes_) == 2 and n_classes >= 2:
        coef = np.vstack([-model.coef_[0], model.coef_[0]]) / 2
        intercept = np.array([-model.intercept_[0], model.intercept_[0]]) / 2
    else:
        coef, intercept = model.coef_, model.intercept_
    weight[model.classes_] = coef
    bias[model.classes_] = intercept
    return weight, bias


def head_fitted(method: str, head: Head, selected: dict, search: pd.DataFrame | None
                ) -> Fitted:
    weight, bias = head
    return Fitted(method, {"weight": weight.astype(np.float32), "bias": bias.astype(np.float32)},
                  selected=selected, search=search,
                  trainable_parameters=int(weight.size + bias.size))


class LinearProbe(FeatureMethod):
    name = "linear_probe"
    Settings = LinearProbeSettings
    description = ("Logistic regression on frozen CLIP image embeddings; C picked on val, "
                   "then refit on train + val.")
    uses_text = False

    def fit(self, data: FeatureSet, settings: LinearProbeSettings) -> Fitted:
        head, c, search = search_and_refit(
            lambda x, y, value: _logistic(x, y, data.n_classes, value, settings.max_iter),
            "C", settings.grid, data)
        return head_fitted(self.name, head, {"C": c}, search)

    def logits(self, fitted: Fitted, x: np.ndarray) -> np.ndarray:
        return linear_logits(fitted.arrays, x)
