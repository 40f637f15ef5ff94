"""The optimiser and learning-rate schedule of a training run, from its settings: AdamW
(CLIP-LoRA) or SGD with momentum (CoOp), and a cosine schedule stepped every optimizer
step, optionally after a constant warm-up (CoOp: 1 epoch at 1e-5). Both are torch's;
their state goes into the checkpoint, so a resumed run follows the same schedule."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LRScheduler,
    SequentialLR,
)

from clip_lora_pipeline.core.adaptation_settings import TrainSettings


def build_optimizer(params: Iterable[torch.nn.Parameter], settings: TrainSettings
                    ) -> torch.optim.Optimizer:
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum,
                               weight_decay=settings.weight_decay)
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)


def warmup_steps(settings: TrainSettings, total_steps: int, steps_per_epoch: int) -> int:
    """The warm-up's optimizer steps; never more than the run has."""
    return min(settings.warmup_epochs * steps_per_epoch, total_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings,
                    total_steps: int, steps_per_epoch: int) -> LRScheduler:
    """Cosine from ``lr`` to ``min_lr`` with a period of the whole run. With a warm-up,
    ``warmup_lr`` for its steps, then the cosine from ``lr`` with the same period: as
    the official CoOp (Dassl's ConstantWarmupScheduler around CosineAnnealingLR with
    T_max = all epochs), whose cosine therefore ends short of its minimum by the
    warm-up's share."""
    cosine = CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=settings.min_lr)
    warmup = warmup_steps(settings, total_steps, steps_per_epoch)
    if not warmup:
        return cosine
    constant = ConstantLR(optimizer, factor=settings.warmup_lr / settings.lr,
                          total_iters=warmup)
    return SequentialLR(optimizer, [constant, cosine], milestones=[warmup])
