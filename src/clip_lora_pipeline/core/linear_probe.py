"""Linear classifiers on cached embeddings.

- The linear probe: L2-regularised logistic regression (lbfgs), C chosen by validation
  accuracy over a log-spaced grid, then refit on train + val (the CLIP paper's protocol).
- The text-initialised head: a linear head that starts as a zero-shot text classifier
  and is pulled back towards it by an L2 penalty, its strength chosen the same way.
  With few shots it stays near zero-shot, where logistic regression from scratch has
  too little data; with many it moves as far as the data support.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

TABLE_COLUMNS = ("label", "class_name", "weights", "bias")


@dataclass
class LinearProbe:
    weights: np.ndarray  # (classes, dim)
    bias: np.ndarray  # (classes,)
    hyperparameter: str  # what the validation search chose: "C" or "anchor_strength"
    value: float  # its chosen value
    search: pd.DataFrame  # <hyperparameter>, val_accuracy
    fit_seconds: float

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weights.T + self.bias

    def to_table(self, class_names: Sequence[str]) -> pd.DataFrame:
        """One row per class (label order): label, class_name, weights, bias and the
        chosen hyperparameter's value in a column of its name."""
        return pd.DataFrame({"label": np.arange(len(class_names)), "class_name": class_names,
                             "weights": list(self.weights), "bias": self.bias,
                             self.hyperparameter: self.value})

    @classmethod
    def from_table(cls, table: pd.DataFrame) -> LinearProbe:
        """The probe back from the table ``to_table`` made."""
        rows = table.sort_values("label")
        hyperparameter = next(c for c in rows.columns if c not in TABLE_COLUMNS)
        return cls(
            weights=np.stack(rows["weights"].to_numpy()).astype(np.float32),
            bias=rows["bias"].to_numpy(dtype=np.float32),
            hyperparameter=hyperparameter,
            value=float(rows[hyperparameter].iloc[0]),
            search=pd.DataFrame(columns=[hyperparameter, "val_accuracy"]),
            fit_seconds=float("nan"),
        )

    def accuracy(self, features: np.ndarray, labels: np.ndarray) -> float:
        return float((self.logits(features).argmax(axis=1) == labels).mean())


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
    return _search_and_refit(
        lambda x, y, C: _fit(x, y, n_classes, C, max_iter), "C", sorted(c_grid),
        train_x, train_y, val_x, val_y,
    )


def fit_text_initialised_head(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
    class_embeddings: np.ndarray, logit_scale: float,
    strength_grid: Sequence[float] = tuple(np.logspace(-5, 2, 8)), max_iter: int = 100,
) -> LinearProbe:
    """A head ``logit_scale * x @ V.T + b`` that starts at the zero-shot classifier
    (V = the classes' normalised text embeddings, b = 0) and minimises cross-entropy
    plus ``strength / 2 * (|V - V0|^2 + |b / logit_scale|^2)``. The objective is convex, so
    full-batch L-BFGS finds the same head whatever the seed. The strength is picked on
    val (ties: the stronger pull), then the head is refit on train + val."""
    anchor = np.asarray(class_embeddings, dtype=np.float64)
    if anchor.ndim != 2 or anchor.shape[1] != train_x.shape[1]:
        raise ValueError(f"class embeddings have shape {anchor.shape}; the image embeddings "
                         f"have width {train_x.shape[1]}: were both made with the same model?")
    return _search_and_refit(
        lambda x, y, strength: _fit_anchored(x, y, anchor, logit_scale, strength, max_iter),
        "anchor_strength", sorted(strength_grid, reverse=True),
        train_x, train_y, val_x, val_y,
    )


def _fit_anchored(features, labels, anchor, logit_scale, strength, max_iter
                  ) -> tuple[np.ndarray, np.ndarray]:
    x = torch.as_tensor(features, dtype=torch.float64)
    y = torch.tensor(labels, dtype=torch.long)
    v0 = torch.as_tensor(anchor)
    v = v0.clone().requires_grad_(True)
    b = torch.zeros(len(v0), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([v, b], max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        penalty = (v - v0).pow(2).sum() + (b / logit_scale).pow(2).sum()
        loss = F.cross_entropy(logit_scale * x @ v.T + b, y) + strength / 2 * penalty
        loss.backward()
        return loss

    optimizer.step(objective)
    return ((logit_scale * v).detach().numpy().astype(np.float32),
            b.detach().numpy().astype(np.float32))


def _search_and_refit(fit, hyperparameter, grid, train_x, train_y, val_x, val_y
                      ) -> LinearProbe:
    """Fit on train for each grid value (in order of preference: the first of equally
    good ones wins), then refit the best on train + val."""
    start = time.perf_counter()
    scores = []
    for value in grid:
        weights, bias = fit(train_x, train_y, float(value))
        predicted = (val_x @ weights.T + bias).argmax(axis=1)
        scores.append((float(value), float((predicted == val_y).mean())))
    search = pd.DataFrame(scores, columns=[hyperparameter, "val_accuracy"])
    best = float(search.loc[search["val_accuracy"].idxmax(), hyperparameter])
    weights, bias = fit(np.vstack([train_x, val_x]), np.concatenate([train_y, val_y]), best)
    return LinearProbe(weights, bias, hyperparameter, best, search, time.perf_counter() - start)
