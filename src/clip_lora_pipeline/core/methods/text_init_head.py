"""The text-initialised head: a linear head that starts as a zero-shot text classifier
and is pulled back towards it by an L2 penalty, its strength chosen on val, then refit
on train + val. With few shots it stays near zero-shot, where logistic regression from
scratch has too little data; with many it moves as far as the data support."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from clip_lora_pipeline.core.methods.base import (
    FeatureMethod,
    FeatureSet,
    Fitted,
    MethodError,
    check_settings,
    linear_logits,
)
from clip_lora_pipeline.core.methods.linear_probe import (
    Head,
    head_fitted,
    search_and_refit,
)


@dataclass(frozen=True)
class TextInitHeadSettings:
    prompt_set: str = "simple"
    strength_min_log10: float = -5
    strength_max_log10: float = 2
    strength_steps: int = 8
    max_iter: int = 100  # L-BFGS iterations per fit

    def __post_init__(self) -> None:
        check_settings("text_init_head",
                       {"strength_steps": self.strength_steps, "max_iter": self.max_iter},
                       {"strength_min_log10": self.strength_min_log10,
                        "strength_max_log10": self.strength_max_log10})
        if self.strength_min_log10 > self.strength_max_log10:
            raise MethodError("text_init_head: strength_min_log10 must be <= "
                              "strength_max_log10.")

    @property
    def grid(self) -> list[float]:
        # Ties go to the stronger pull: the head closer to zero-shot.
        return sorted(np.logspace(self.strength_min_log10, self.strength_max_log10,
                                  self.strength_steps), reverse=True)


def _anchored(x: np.ndarray, y: np.ndarray, anchor: np.ndarray, logit_scale: float,
              strength: float, max_iter: int) -> Head:
    """Minimise cross-entropy of ``logit_scale * x @ V.T + b`` plus ``strength / 2 *
    (|V - V0|^2 + |b / logit_scale|^2)``: convex, so full-batch L-BFGS finds the same
    head whatever the seed."""
    features = torch.as_tensor(x, dtype=torch.float64)
    labels = torch.tensor(y, dtype=torch.long)  # a copy: y may be a read-only view
    v0 = torch.as_tensor(anchor, dtype=torch.float64)
    v = v0.clone().requires_grad_(True)
    b = torch.zeros(len(v0), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([v, b], max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        penalty = (v - v0).pow(2).sum() + (b / logit_scale).pow(2).sum()
        loss = F.cross_entropy(logit_scale * features @ v.T + b, labels) + strength / 2 * penalty
        loss.backward()
        return loss

    optimizer.step(objective)
    return ((logit_scale * v).detach().numpy().astype(np.float32),
            b.detach().numpy().astype(np.float32))


class TextInitHead(FeatureMethod):
    name = "text_init_head"
    Settings = TextInitHeadSettings
    description = ("Linear head on frozen image embeddings that starts as the zero-shot "
                   "classifier and is pulled back towards it; the pull picked on val, then "
                   "refit on train + val.")

    def fit(self, data: FeatureSet, settings: TextInitHeadSettings) -> Fitted:
        if data.text.shape[1] != data.train_x.shape[1]:
            raise MethodError(f"text_init_head: class embeddings have width {data.text.shape[1]}"
                              f", image embeddings {data.train_x.shape[1]}: were both made "
                              "with the same model?")
        head, strength, search = search_and_refit(
            lambda x, y, value: _anchored(x, y, data.text, data.logit_scale, value,
                                          settings.max_iter),
            "anchor_strength", settings.grid, data)
        return head_fitted(self.name, head, {"anchor_strength": strength}, search)

    def logits(self, fitted: Fitted, x: np.ndarray) -> np.ndarray:
        return linear_logits(fitted.arrays, x)
