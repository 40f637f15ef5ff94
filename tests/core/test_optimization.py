"""The optimiser, epoch budget and learning-rate schedule of the training settings:
SGD or AdamW, steps from epochs by shots (CoOp's 50/100/200), a constant warm-up then
the cosine (Dassl's schedule, per step), and every wrong value named with its key."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR

from clip_lora_pipeline.core.adaptation_settings import (
    TrainSettings,
    adaptation_settings,
)
from clip_lora_pipeline.core.backbone import SettingError
from clip_lora_pipeline.core.optimization import build_optimizer, build_scheduler
from tests.core.tiny import assert_close


def _coop(**entry) -> TrainSettings:
    return adaptation_settings("x", {"method": "coop", **entry}).train


@pytest.mark.parametrize(("shots", "images", "steps"), [
    (1, 102, 50 * 4),  # 102 images at batch 32: 4 steps an epoch, the last partial
    (2, 204, 100 * 7),
    (3, 306, 100 * 10),  # no entry for 3 shots: the one for 2
    (4, 408, 100 * 13),
    (8, 816, 200 * 26),
    (16, 1632, 200 * 51),
    (32, 3264, 200 * 102),
])
def test_steps_are_epochs_for_the_shots_times_batches_per_epoch(shots, images, steps):
    assert _coop().total_steps(shots, images) == steps


def test_an_epoch_count_max_steps_and_the_default_budget():
    assert TrainSettings(epochs=3, batch_size=16).total_steps(None, 47) == 3 * 3
    assert _coop(max_steps=7).total_steps(4, 408) == 7  # max_steps overrides epochs
    assert TrainSettings().total_steps(16) == 500 * 16  # CLIP-LoRA's, no images needed
    with pytest.raises(SettingError, match=r"^epochs maps shots to epochs, but shots is null"):
        _coop().total_steps(None, 100)
    with pytest.raises(SettingError, match=r"^epochs has no entry for 1 shot\(s\) or fewer "
                                           r"\(it maps \[2, 4\]\)"):
        _coop(epochs={2: 10, 4: 20}).total_steps(1, 10)


def test_epochs_by_shots_come_back_from_a_stored_config():
    settings = adaptation_settings("x", {"method": "coop"})
    stored = json.loads(json.dumps(settings.params()))  # the adapter's config: "1", "16", ...
    assert list(stored["epochs"]) == ["1", "2", "4", "8", "16"]
    assert adaptation_settings("x", stored) == settings
    assert list(settings.train.epochs) == [1, 2, 4, 8, 16]


@pytest.mark.parametrize(("entry", "message"), [
    ({"optimizer": "adam"}, r"optimizer must be one of \['adamw', 'sgd'\]; got 'adam'"),
    ({"momentum": 1.0}, r"momentum must be a number in \[0, 1\); got 1\.0"),
    ({"epochs": 0}, r"epochs must be null, an integer >= 1, or shots -> epochs"),
    ({"epochs": {}}, r"epochs must be null, an integer >= 1, or shots -> epochs"),
    ({"epochs": {0: 50}}, r"epochs must be null, an integer >= 1, or shots -> epochs"),
    ({"epochs": {"one": 50}}, r"epochs must be null, .*; got \{'one': 50\}"),
    ({"epochs": {1: 2.5}}, r"epochs must be null, an integer >= 1, or shots -> epochs"),
    ({"warmup_epochs": -1}, r"warmup_epochs must be an integer >= 0; got -1"),
    ({"warmup_lr": 0}, r"warmup_lr must be a number > 0; got 0"),
    ({"method": "coop", "lr": 1e-6}, r"warmup_lr must be at most lr \(1e-06\) for a warm-up"),
])
def test_a_wrong_training_setting_names_its_key(entry, message):
    with pytest.raises(ValueError, match=r"^adaptation_methods\.x\." + message):
        adaptation_settings("x", entry)
    # a low lr without a warm-up needs no warmup_lr below it
    assert adaptation_settings("x", {"lr": 1e-6}).train.warmup_epochs == 0


def _lrs(settings: TrainSettings, total: int, per_epoch: int) -> list[float]:
    """The lr of each optimizer step, as the loop steps them."""
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(2))], settings)
    scheduler = build_scheduler(optimizer, settings, total, per_epoch)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def _cosine(lr: float, low: float, t: int, period: int) -> float:
    return low + (lr - low) * (1 + math.cos(math.pi * t / period)) / 2


def test_coop_warms_up_at_a_constant_lr_then_follows_the_cosine_of_the_whole_run():
    settings = _coop()  # 1 warm-up epoch at 1e-5, then cosine from 2e-3 to 0
    lrs = _lrs(settings, total=20, per_epoch=4)
    assert_close(lrs[:4], [1e-5] * 4)
    # Dassl's cosine restarts its count after the warm-up, with T_max the whole run
    assert_close(lrs[4:], [_cosine(2e-3, 0.0, t - 4, 20) for t in range(4, 20)])
    assert lrs[4] == pytest.approx(2e-3) and lrs[-1] > 0


def test_without_a_warm_up_the_schedule_is_the_plain_cosine_to_min_lr():
    settings = TrainSettings(min_lr=1e-6)
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(2))], settings)
    assert isinstance(build_scheduler(optimizer, settings, 10, 3), CosineAnnealingLR)
    assert_close(_lrs(settings, 10, 3), [_cosine(2e-4, 1e-6, t, 10) for t in range(10)])
    # a warm-up longer than the run: all of it at warmup_lr
    assert_close(_lrs(_coop(warmup_epochs=5), 6, 2), [1e-5] * 6)


def test_the_optimizer_is_sgd_with_coops_momentum_or_adamw():
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = build_optimizer(params, _coop())
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == \
        (2e-3, 0.9, 5e-4, False)
    adamw = build_optimizer(params, TrainSettings())
    assert isinstance(adamw, torch.optim.AdamW)
    assert (adamw.param_groups[0]["lr"], adamw.param_groups[0]["weight_decay"]) == (2e-4, 1e-2)
