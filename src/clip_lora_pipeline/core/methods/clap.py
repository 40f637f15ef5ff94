"""CLAP: the class-adaptive linear probe (Silva-Rodriguez et al., "A Closer Look at the
Few-Shot Adaptation of Large Vision-Language Models", CVPR 2024; github.com/jusiro/CLAP).

A cosine classifier ``logit_scale * x @ normalise(W).T`` starts at the zero-shot
prototypes (ZS-LP) and is trained with cross-entropy plus a class-wise L2 penalty
towards them, ``mean_k lambda_k |W_k - T_k|^2``. Each ``lambda_k`` is fixed before
training: the mean zero-shot probability of class k over its own support samples, so a
class that zero-shot already gets right is held close to its prototype and a class it
gets wrong is free to move. Nothing is chosen on val: the paper's point is that the
defaults need no validation set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from clip_lora_pipeline.core.methods.base import (
    FeatureMethod,
    FeatureSet,
    Fitted,
    MethodError,
    linear_logits,
)

CONSTRAINTS = ("l2", "none")


@dataclass(frozen=True)
class ClapSettings:
    """Defaults are the official run (scripts/adapt.sh with SGD_lr1e-1_B256_ep300, INIT
    ZS, CONSTRAINT l2) except ``prototype_norm``. ``constraint: none`` is the paper's
    ZS-LP baseline.

    ``prototype_norm``: the length of the prototypes W and anchors T during training.
    The official code trains on CLIP's raw (unnormalised) text embeddings; only their
    directions reach the logits, but the length c sets the balance: in direction space
    the cross-entropy step shrinks as 1/c^2 while the penalty's pull does not change.
    The cached classifier is unit length, hence 1; set the mean raw norm of the model's
    text embeddings to match the official run."""

    prompt_set: str = "simple"
    constraint: str = "l2"
    lr: float = 0.1
    epochs: int = 300
    batch_size: int = 256
    momentum: float = 0.9
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    prototype_norm: float = 1.0
    seed: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.prompt_set, str) or not self.prompt_set:
            raise MethodError(f"clap: prompt_set must be a prompt set's name, got "
                              f"{self.prompt_set!r}.")
        if self.constraint not in CONSTRAINTS:
            raise MethodError(f"clap: constraint must be one of {list(CONSTRAINTS)}, got "
                              f"{self.constraint!r}.")
        _check("lr", self.lr, _number(self.lr) and self.lr > 0, "a number > 0")
        _check("epochs", self.epochs, _integer(self.epochs) and self.epochs >= 1,
               "an integer >= 1")
        _check("batch_size", self.batch_size,
               _integer(self.batch_size) and self.batch_size >= 1, "an integer >= 1")
        _check("momentum", self.momentum, _number(self.momentum) and 0 <= self.momentum < 1,
               "a number in [0, 1)")
        _check("warmup_epochs", self.warmup_epochs,
               _integer(self.warmup_epochs) and 0 <= self.warmup_epochs < self.epochs,
               "an integer in [0, epochs)")
        _check("warmup_lr", self.warmup_lr, _number(self.warmup_lr) and self.warmup_lr > 0,
               "a number > 0")
        _check("prototype_norm", self.prototype_norm,
               _number(self.prototype_norm) and self.prototype_norm > 0, "a number > 0")
        _check("seed", self.seed, _integer(self.seed), "an integer")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(name: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise MethodError(f"clap: {name} must be {allowed}, got {value!r}.")


def class_multipliers(x: np.ndarray, y: np.ndarray, text: np.ndarray,
                      logit_scale: float) -> np.ndarray:
    """lambda_k: the mean zero-shot softmax probability of class k over the samples of
    class k (the official init_lagrangian_multipliers for constraint "l2")."""
    logits = torch.as_tensor(logit_scale * x @ text.T, dtype=torch.float64)
    p_true = logits.softmax(dim=1)[torch.arange(len(y)), torch.as_tensor(y)].numpy()
    counts = np.bincount(y, minlength=len(text))
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        raise MethodError(f"clap: {missing.size} class(es) have no training samples "
                          f"(first: {missing[:10].tolist()}); their multiplier is undefined.")
    return (np.bincount(y, weights=p_true, minlength=len(text)) / counts).astype(np.float32)


def learning_rate(epoch: int, s: ClapSettings) -> float:
    """Dassl's constant warm-up, then cosine annealing over ``epochs`` counted from the
    end of the warm-up (WARMUP_RECOUNT), stepped once per epoch."""
    if epoch < s.warmup_epochs:
        return s.warmup_lr
    return s.lr * (1 + math.cos(math.pi * (epoch - s.warmup_epochs) / s.epochs)) / 2


def training_samples(data: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
    """Every augmented view as a sample when views are given (the official code trains
    on 20 augmentations per support image and never on the plain one), else train_x."""
    if data.train_views is None:
        return data.train_x, data.train_y
    views = data.train_views
    n, d = data.train_x.shape
    if views.ndim != 3 or views.shape[0] != n or views.shape[2] != d:
        raise MethodError(f"clap: train_views must have shape ({n}, views, {d}), got "
                          f"{views.shape}.")
    return views.reshape(-1, d), np.repeat(data.train_y, views.shape[1])


class Clap(FeatureMethod):
    """CLAP on cached features: trains on ``FeatureSet.train_views`` (all views of every
    support image, as the official code) when given, else on ``train_x``."""

    name: ClassVar[str] = "clap"
    Settings: ClassVar[type] = ClapSettings
    description: ClassVar[str] = ("Class-adaptive linear probe: a zero-shot-initialised "
                                  "cosine head pulled towards the text prototypes by a "
                                  "class-wise penalty set from zero-shot confidence.")
    uses_views: ClassVar[bool] = True
    uses_text: ClassVar[bool] = True

    def fit(self, data: FeatureSet, settings: ClapSettings) -> Fitted:
        x, y = training_samples(data)
        if data.text.shape[1] != x.shape[1]:
            raise MethodError(f"clap: the text classifier has width {data.text.shape[1]}, "
                              f"the image features {x.shape[1]}: same model?")
        multipliers = (class_multipliers(x, y, data.text, data.logit_scale)
                       if settings.constraint == "l2" else None)
        # Official batches per epoch: those of the support-image loader (drop_last once
        # it holds a full batch), each drawn from the shuffled pool of views.
        steps = max(1, len(data.train_x) // settings.batch_size)
        prototypes = _train(x, y, data.text, data.logit_scale, multipliers, steps, settings)
        weight = data.logit_scale * prototypes / np.linalg.norm(prototypes, axis=1,
                                                                 keepdims=True)
        return Fitted(
            self.name,
            {"weight": weight.astype(np.float32),
             "bias": np.zeros(len(weight), dtype=np.float32)},
            {"constraint": settings.constraint, "train_samples": len(x)},
            trainable_parameters=int(prototypes.size),
        )

    def logits(self, fitted: Fitted, x: np.ndarray) -> np.ndarray:
        return linear_logits(fitted.arrays, x)


def _train(x: np.ndarray, y: np.ndarray, text: np.ndarray, logit_scale: float,
           multipliers: np.ndarray | None, steps: int, s: ClapSettings) -> np.ndarray:
    """SGD on the prototypes W (K, d), started at the zero-shot text T."""
    features = torch.as_tensor(x, dtype=torch.float32)
    labels = torch.as_tensor(y, dtype=torch.long)
    anchor = s.prototype_norm * torch.as_tensor(text, dtype=torch.float32)
    lambdas = None if multipliers is None else torch.as_tensor(multipliers)
    prototypes = anchor.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([prototypes], lr=s.lr, momentum=s.momentum)
    generator = torch.Generator().manual_seed(s.seed)
    for epoch in range(s.epochs):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(epoch, s)
        order = torch.randperm(len(features), generator=generator)
        for step in range(steps):
            batch = order[step * s.batch_size:(step + 1) * s.batch_size]
            logits = logit_scale * features[batch] @ F.normalize(prototypes, dim=1).T
            loss = F.cross_entropy(logits, labels[batch])
            if lambdas is not None:
                loss = loss + (lambdas * (prototypes - anchor).pow(2).sum(1)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return prototypes.detach().numpy()
