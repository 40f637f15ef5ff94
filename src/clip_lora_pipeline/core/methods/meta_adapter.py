"""Meta-Adapter (Cheng et al., NeurIPS 2023): each class's text embedding is refined by
a gated cross-attention over that class's few-shot image features.

Follows the official code (github.com/ArsenalCheng/Meta-Adapter, ``main.py``): the text
embedding is the query; the keys and values are the text embedding itself followed by
the class's support features; only queries and keys are projected (one head, scaled by
sqrt(dim)); a gate ``sigmoid(alpha_proj(text))`` weighs the attended feature, which is
added to the text embedding and re-normalised. Images are scored against the refined
class embeddings. Because the module needs only a class's text and support features, it
applies to classes it was never trained on (``base_to_new``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from clip_lora_pipeline.core.methods.base import (
    FeatureMethod,
    FeatureSet,
    Fitted,
    MethodError,
)

_MODULE_ARRAYS = ("q_proj.weight", "k_proj.weight", "alpha_proj.weight", "alpha_proj.bias")


@dataclass(frozen=True)
class MetaAdapterSettings:
    """Defaults from the official ``configs/*.yaml`` (lr, train_epoch) and ``main.py``
    (AdamW with eps 1e-4 and torch's default weight decay, batch 64, cosine schedule per
    step, seed 1)."""

    prompt_set: str = "simple"
    lr: float = 1e-4
    epochs: int = 5
    batch_size: int = 64
    weight_decay: float = 0.01
    eps: float = 1e-4
    seed: int = 1
    base_to_new: bool = False
    base_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.prompt_set, str) or not self.prompt_set:
            raise MethodError(f"meta_adapter: prompt_set must be a non-empty prompt set "
                              f"name, got {self.prompt_set!r}.")
        for name in ("lr", "eps"):
            if not _is_number(getattr(self, name)) or getattr(self, name) <= 0:
                raise MethodError(f"meta_adapter: {name} must be a number > 0, got "
                                  f"{getattr(self, name)!r}.")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise MethodError(f"meta_adapter: weight_decay must be a number >= 0, got "
                              f"{self.weight_decay!r}.")
        for name in ("epochs", "batch_size"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise MethodError(f"meta_adapter: {name} must be an integer >= 1, got "
                                  f"{getattr(self, name)!r}.")
        if not _is_int(self.seed):
            raise MethodError(f"meta_adapter: seed must be an integer, got {self.seed!r}.")
        if not isinstance(self.base_to_new, bool):
            raise MethodError(f"meta_adapter: base_to_new must be true or false, got "
                              f"{self.base_to_new!r}.")
        if not _is_number(self.base_fraction) or not 0 < self.base_fraction < 1:
            raise MethodError(f"meta_adapter: base_fraction must be a number in (0, 1), "
                              f"got {self.base_fraction!r}.")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def split_base_new(n_classes: int, fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Base labels (the first ``ceil(n_classes * fraction)``, as CoOp's base-to-new
    split rounds up) and new labels (the rest)."""
    n_base = math.ceil(n_classes * fraction)
    if not 0 < n_base < n_classes:
        raise MethodError(f"meta_adapter: base_fraction {fraction} leaves no base or no "
                          f"new classes among {n_classes}.")
    labels = np.arange(n_classes)
    return labels[:n_base], labels[n_base:]


class _GatedCrossAttention(nn.Module):
    """The official ``MetaAdapter`` module, batched over classes, with masks for classes
    that have fewer support features than others."""

    def __init__(self, dim: int, generator: torch.Generator):
        super().__init__()
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.alpha_proj = nn.Linear(dim, 1, bias=True)
        with torch.no_grad():  # the official init: Xavier-uniform weights, gate bias 1
            for layer in (self.q_proj, self.k_proj, self.alpha_proj):
                bound = math.sqrt(6.0 / sum(layer.weight.shape))
                layer.weight.uniform_(-bound, bound, generator=generator)
            self.alpha_proj.bias.fill_(1.0)

    def forward(self, text: torch.Tensor, support: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """Refined class embeddings (C, d) from text (C, d), support (C, S, d) and the
        mask of real support slots (C, S)."""
        # q . (W_k x) = (q W_k) . x: projecting the query once, instead of every key,
        # is S + 1 times cheaper and the same scores
        query = self.q_proj(text) @ self.k_proj.weight
        scale = math.sqrt(text.shape[1])
        # the text token is key and value too, so every class attends to something
        self_score = (query * text).sum(dim=1, keepdim=True) / scale
        support_scores = torch.einsum("cd,csd->cs", query, support) / scale
        scores = torch.cat([self_score, support_scores.masked_fill(~mask, float("-inf"))], 1)
        weights = scores.softmax(dim=1)
        attended = weights[:, :1] * text + torch.einsum("cs,csd->cd", weights[:, 1:], support)
        gate = torch.sigmoid(self.alpha_proj(text))
        return F.normalize(text + gate * attended, dim=-1)


class MetaAdapter(FeatureMethod):
    name = "meta_adapter"
    Settings = MetaAdapterSettings
    description = ("Meta-Adapter: gated cross-attention refines each class's text "
                   "embedding from its few-shot image features (epoch chosen on val).")
    uses_views = True  # the official code averages augmented views for the support set
    uses_text = True

    def fit(self, data: FeatureSet, settings: MetaAdapterSettings) -> Fitted:
        n_classes = data.n_classes
        n_train_classes = (len(split_base_new(n_classes, settings.base_fraction)[0])
                           if settings.base_to_new else n_classes)
        support, slots = _support_slots(_support_features(data), data.train_y, n_classes)
        train_rows = np.flatnonzero(data.train_y < n_train_classes)
        val_rows = np.flatnonzero(data.val_y < n_train_classes)
        if len(train_rows) == 0 or len(val_rows) == 0:
            raise MethodError("meta_adapter: needs train and val samples of the classes "
                              "it trains on.")
        generator = torch.Generator().manual_seed(settings.seed)
        module = _GatedCrossAttention(data.text.shape[1], generator)
        task = _Task(
            text=torch.from_numpy(data.text[:n_train_classes]).float(),
            support=torch.from_numpy(support[:n_train_classes]),
            slots=torch.from_numpy(slots[:n_train_classes]),
            queries=torch.from_numpy(_query_views(data)[train_rows]),
            query_rows=torch.from_numpy(train_rows),
            targets=torch.from_numpy(data.train_y[train_rows]).long(),
            scale=float(data.logit_scale),
        )
        history, best_state = _train(module, task, data.val_x[val_rows],
                                     data.val_y[val_rows], settings, generator)
        best = max(history, key=lambda row: row["val_accuracy"])  # the first of ties
        arrays = {name: tensor.numpy() for name, tensor in best_state.items()}
        arrays.update(text=np.ascontiguousarray(data.text, dtype=np.float32),
                      support=support, support_count=(slots >= 0).sum(axis=1))
        return Fitted(
            method=self.name, arrays=arrays,
            config={"logit_scale": float(data.logit_scale), "dim": int(data.text.shape[1]),
                    "trained_classes": int(n_train_classes)},
            selected={"epoch": best["epoch"]},
            search=pd.DataFrame(history),
            trainable_parameters=sum(p.numel() for p in module.parameters()),
        )

    def logits(self, fitted: Fitted, x: np.ndarray) -> np.ndarray:
        module = _module_from_arrays(fitted)
        support = torch.from_numpy(np.asarray(fitted.arrays["support"], dtype=np.float32))
        counts = torch.as_tensor(np.asarray(fitted.arrays["support_count"])).long()
        mask = torch.arange(support.shape[1])[None, :] < counts[:, None]
        text = torch.from_numpy(np.asarray(fitted.arrays["text"], dtype=np.float32))
        with torch.no_grad():
            weights = module(text, support, mask)
            scores = torch.from_numpy(np.asarray(x, dtype=np.float32)) @ weights.T
        return (fitted.config["logit_scale"] * scores).numpy()


@dataclass(frozen=True)
class _Task:
    """The training problem: the classes' text and padded support, the train queries
    (n, views, d), their row numbers in the train set, and their labels."""

    text: torch.Tensor
    support: torch.Tensor
    slots: torch.Tensor
    queries: torch.Tensor
    query_rows: torch.Tensor
    targets: torch.Tensor
    scale: float

    def weights(self, module: nn.Module, held_out: torch.Tensor | None) -> torch.Tensor:
        """Refined class embeddings with the train rows in ``held_out`` removed from the
        support, so that no query is scored against its own features."""
        mask = self.slots >= 0
        if held_out is not None:
            mask &= ~torch.isin(self.slots, held_out)
        return module(self.text, self.support, mask)


def _train(module: nn.Module, task: _Task, val_x: np.ndarray, val_y: np.ndarray,
           settings: MetaAdapterSettings, generator: torch.Generator):
    """AdamW with a per-step cosine schedule (as the official ``run_meta_adapter``);
    returns each epoch's val accuracy and the weights of the best epoch."""
    n = len(task.targets)
    steps = settings.epochs * math.ceil(n / settings.batch_size)
    optimizer = torch.optim.AdamW(module.parameters(), lr=settings.lr, eps=settings.eps,
                                  weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    val_x_t, val_y_t = torch.from_numpy(val_x).float(), torch.from_numpy(val_y).long()
    history, best_state, best_acc = [], None, -1.0
    for epoch in range(1, settings.epochs + 1):
        losses = []
        for batch in torch.randperm(n, generator=generator).split(settings.batch_size):
            views = torch.randint(task.queries.shape[1], (len(batch),), generator=generator)
            weights = task.weights(module, task.query_rows[batch])
            logits = task.scale * task.queries[batch, views] @ weights.T
            loss = F.cross_entropy(logits, task.targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        with torch.no_grad():
            val_pred = (val_x_t @ task.weights(module, None).T).argmax(dim=1)
        accuracy = float((val_pred == val_y_t).float().mean())
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)),
                        "val_accuracy": accuracy})
        if accuracy > best_acc:
            best_acc = accuracy
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return history, best_state


def _support_features(data: FeatureSet) -> np.ndarray:
    """Each train image's support feature: the normalised mean of its augmented views
    (the official cache averages 10 augmented passes), or the image itself."""
    if data.train_views is None:
        return np.asarray(data.train_x, dtype=np.float32)
    mean = np.asarray(data.train_views, dtype=np.float32).mean(axis=1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def _query_views(data: FeatureSet) -> np.ndarray:
    """(n, V, d) training queries: a fresh augmented view per epoch, as the official
    loader re-augments; the plain features (V = 1) when there are no views."""
    views = data.train_x[:, None] if data.train_views is None else data.train_views
    return np.ascontiguousarray(views, dtype=np.float32)


def _support_slots(features: np.ndarray, labels: np.ndarray,
                   n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Support features padded per class to (C, S, d), and the train row in each slot
    (C, S), -1 for padding. Slots are filled from the front, so a class's count of
    non-negative slots rebuilds its mask."""
    counts = np.bincount(labels, minlength=n_classes)
    slots = np.full((n_classes, max(int(counts.max()), 1)), -1, dtype=np.int64)
    for label in range(n_classes):
        rows = np.flatnonzero(labels == label)
        slots[label, :len(rows)] = rows
    support = np.where((slots >= 0)[..., None], features[slots.clip(min=0)], 0.0)
    return support.astype(np.float32), slots


def _module_from_arrays(fitted: Fitted) -> _GatedCrossAttention:
    module = _GatedCrossAttention(int(fitted.config["dim"]), torch.Generator())
    state = {name: torch.from_numpy(np.asarray(fitted.arrays[name], dtype=np.float32))
             for name in _MODULE_ARRAYS}
    module.load_state_dict(state)
    return module.eval()
