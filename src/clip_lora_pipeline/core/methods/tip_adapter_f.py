"""Tip-Adapter-F: Tip-Adapter with trained cache keys (official main.py,
run_tip_adapter_F). The keys, initialised as Tip-Adapter's, are a trainable linear
layer; the values (one-hot labels) and the zero-shot classifier stay fixed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from clip_lora_pipeline.core.methods.base import FeatureSet, Fitted, MethodError
from clip_lora_pipeline.core.methods.tip_adapter import (
    Cache,
    TipAdapter,
    TipAdapterSettings,
    cache_keys,
    check_data,
    check_positive,
    fitted_model,
    is_integer,
    search_alpha_beta,
    tip_logits,
)

ADAMW_EPS = 1e-4  # main.py run_tip_adapter_F; fixed there, not a config entry


@dataclass(frozen=True)
class TipAdapterFSettings(TipAdapterSettings):
    """Tip-Adapter's search grid plus the training of the keys: ``init_beta`` and
    ``init_alpha`` (used while training and to pick the epoch; configs/imagenet.yaml),
    ``lr`` and ``train_epoch`` (every config; eurosat's trains 100 epochs),
    ``batch_size`` (main.py's train_loader_F) and ``seed`` for the shuffling."""

    init_beta: float = 1.0
    init_alpha: float = 1.17
    lr: float = 1e-3
    train_epoch: int = 20
    batch_size: int = 256
    seed: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        for name in ("init_beta", "init_alpha", "lr"):
            check_positive(owner, name, getattr(self, name))
        for name in ("train_epoch", "batch_size"):
            check_positive(owner, name, getattr(self, name), integer=True)
        if not is_integer(self.seed):
            raise MethodError(f"{owner}: setting 'seed' must be an integer; "
                              f"got {self.seed!r}.")


class TipAdapterF(TipAdapter):
    """The keys are trained with cross-entropy on the Tip-Adapter logits at (init_beta,
    init_alpha): AdamW (lr, eps 1e-4, torch's default weight decay), a cosine schedule
    over all steps, shuffled batches (the last one kept). Then alpha and beta are
    searched on val as Tip-Adapter's.

    Differences from main.py: it draws a fresh augmentation of every train image each
    epoch; here epoch e (from 0) trains on the cached view e mod V of ``train_views``,
    or on ``train_x`` when the cell has no views. It keeps the keys of the epoch best on
    its TEST set; here those of the epoch best on val (the first best), so test is never
    seen. It trains in CLIP's float16; here float32."""

    name = "tip_adapter_f"
    Settings = TipAdapterFSettings
    description = ("Tip-Adapter-F: Tip-Adapter with its cache keys fine-tuned on the "
                   "few-shot train views; epoch, alpha and beta chosen on val.")

    def fit(self, data: FeatureSet, settings: TipAdapterFSettings) -> Fitted:
        check_data(self.name, data)
        keys, epochs = train_keys(data, settings)
        best_epoch = int(epochs["epoch"][epochs["val_accuracy"].idxmax()])
        cache = Cache.build(keys, data.train_y, data.n_classes)
        table, beta, alpha = search_alpha_beta(settings, data, cache)
        # One table of every candidate: the epochs at the initial alpha and beta, then
        # the grid at the chosen epoch.
        search = pd.concat([epochs.assign(stage="epoch"),
                            table.assign(stage="alpha_beta", epoch=best_epoch)],
                           ignore_index=True)
        fitted = fitted_model(self.name, data, cache, beta, alpha,
                              search[["stage", "epoch", "beta", "alpha", "val_accuracy"]],
                              epoch=best_epoch)
        fitted.trainable_parameters = int(keys.size)
        return fitted


def epoch_views(data: FeatureSet) -> torch.Tensor:
    """(V, n, d): what the epochs train on, epoch e on view e mod V."""
    if data.train_views is None:
        return torch.as_tensor(data.train_x, dtype=torch.float32)[None]
    return torch.as_tensor(data.train_views, dtype=torch.float32).transpose(0, 1)


def train_keys(data: FeatureSet, settings: TipAdapterFSettings
               ) -> tuple[np.ndarray, pd.DataFrame]:
    """The keys of the epoch best on val, and each epoch's (from 1) val accuracy at
    (init_beta, init_alpha)."""
    views, y = epoch_views(data), torch.tensor(data.train_y, dtype=torch.long)  # a copy
    values = F.one_hot(y, data.n_classes).float()
    text = torch.as_tensor(data.text, dtype=torch.float32)
    beta, alpha = settings.init_beta, settings.init_alpha
    weight = torch.nn.Parameter(torch.from_numpy(cache_keys(data)))
    optimizer = torch.optim.AdamW([weight], lr=settings.lr, eps=ADAMW_EPS)
    batches = -(-len(y) // settings.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, settings.train_epoch * batches)
    generator = torch.Generator().manual_seed(settings.seed)
    best_keys, best_acc, rows = None, -1.0, []
    for epoch in range(settings.train_epoch):
        x = views[epoch % len(views)]
        for idx in torch.randperm(len(y), generator=generator).split(settings.batch_size):
            affinity = x[idx] @ weight.T
            logits = (data.logit_scale * x[idx] @ text.T
                      + alpha * ((affinity - 1) * beta).exp() @ values)
            optimizer.zero_grad()
            F.cross_entropy(logits, y[idx]).backward()
            optimizer.step()
            scheduler.step()
        keys = weight.detach().numpy().copy()
        acc = val_accuracy(data, keys, beta, alpha)
        rows.append({"epoch": epoch + 1, "beta": beta, "alpha": alpha, "val_accuracy": acc})
        if acc > best_acc:
            best_keys, best_acc = keys, acc
    return best_keys, pd.DataFrame(rows)


def val_accuracy(data: FeatureSet, keys: np.ndarray, beta: float, alpha: float) -> float:
    cache = Cache.build(keys, data.train_y, data.n_classes)
    logits = tip_logits(cache, data.text, data.logit_scale, beta, alpha, data.val_x)
    return float((logits.argmax(axis=1) == data.val_y).mean())
