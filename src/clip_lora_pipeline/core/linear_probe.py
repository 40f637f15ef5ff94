"""Linear probe on cached embeddings: L2-regularised logistic regression (lbfgs), C chosen
by validation accuracy over a log-spaced grid, then refit on train + val (the CLIP
paper's protocol)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression


@dataclass
class LinearProbe:
    weights: np.ndarray  # (classes, dim)
    bias: np.ndarray  # (classes,)
    C: float
    search: pd.DataFrame  # C, val_accuracy
    fit_seconds: float

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weights.T + self.bias

    def to_table(self, class_names: Sequence[str]) -> pd.DataFrame:
        """One row per class (label order): label, class_name, weights, bias, C."""
        return pd.DataFrame({"label": np.arange(len(class_names)), "class_name": class_names,
                             "weights": list(self.weights), "bias": self.bias, "C": self.C})

    @classmethod
    def from_table(cls, table: pd.DataFrame) -> LinearProbe:
        """The probe back from the table ``to_table`` made."""
        rows = table.sort_values("label")
        return cls(
            weights=np.stack(rows["weights"].to_numpy()).astype(np.float32),
            bias=rows["bias"].to_numpy(dtype=np.float32),
            C=float(rows["C"].iloc[0]),
            search=pd.DataFrame(columns=["C", "val_accuracy"]),
            fit_seconds=float("nan"),
        )


def _fit(features, labels, n_classes, C, max_iter) -> tuple[np.ndarray, np.ndarray]:
    model = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features, labels)
    # Classes missing from the fit data keep a -inf-like bias, so they are never predicted.
    weights = np.zeros((n_classes, features.shape[1]), dtype=np.float32)
    bias = np.full(n_classes, -1e9, dtype=np.float32)
    if len(model.classes_) == 2 and n_classes >= 2:
        coef = np.vstack([-model.coef_[0], model.coef_[0]]) / 2
        intercept = np.array([-model.intercept_[0], model.intercept_[0]]) / 2
    else:
        coef, intercept = model.coef_, model.intercept_
    weights[model.classes_] = coef
    bias[model.classes_] = intercept
    return weights, bias


def fit_linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
    n_classes: int, c_grid: Sequence[float] = tuple(np.logspace(-3, 3, 13)),
    max_iter: int = 1000,
) -> LinearProbe:
    """Pick C on val, then refit on train + val with it."""
    start = time.perf_counter()
    scores = []
    for C in c_grid:
        weights, bias = _fit(train_x, train_y, n_classes, float(C), max_iter)
        predicted = (val_x @ weights.T + bias).argmax(axis=1)
        scores.append((float(C), float((predicted == val_y).mean())))
    search = pd.DataFrame(scores, columns=["C", "val_accuracy"])
    best_c = float(search.loc[search["val_accuracy"].idxmax(), "C"])  # first (smallest) best C
    weights, bias = _fit(np.vstack([train_x, val_x]), np.concatenate([train_y, val_y]),
                         n_classes, best_c, max_iter)
    return LinearProbe(weights, bias, best_c, search, time.perf_counter() - start)
