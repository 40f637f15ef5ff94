"""The training loop for an ``AdaptedClip`` (LoRA, BitFit): AdamW on its trainable
tensors, a cosine schedule, a gradient scaler under fp16, validation every N steps, and
a checkpoint (``core.checkpoints``) every N steps.

Deterministic on CPU for a seed; an interrupted run resumes from its last checkpoint to
the same result as an uninterrupted one. Batches come from ``core.batches`` (shuffled
epochs, partial last batch).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torchvision import transforms as T
from tqdm.auto import tqdm

from clip_lora_pipeline.core.adapted import AdaptedClip
from clip_lora_pipeline.core.batches import EpochBatches, micro_batches
from clip_lora_pipeline.core.checkpoints import (
    Checkpoint,
    CheckpointStore,
    Progress,
    rng_state,
)
from clip_lora_pipeline.core.images import load_rgb
from clip_lora_pipeline.core.runtime import PeakMemory, autocast, tune_cpu_allocator

logger = logging.getLogger(__name__)


class TrainingError(ValueError):
    """A training run that cannot go on as asked."""


@dataclass
class TrainResult:
    history: pd.DataFrame
    trainable_parameters: int
    wall_seconds: float
    peak_memory_mb: float
    peak_memory_kind: str
    best_step: int
    best_val_accuracy: float
    stopped_early: bool
    steps_done: int
    selected: str  # which state the model holds now: "last" or "best_val"
    selected_step: int


def train_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                    crop_scale: tuple[float, float]) -> T.Compose:
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=crop_scale,
                            interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def _load_images(paths: Sequence[str], indices: np.ndarray, transform, seed: int, step: int):
    # Each sample's augmentation draws from its own generator, so the batch is the same
    # whether the run was interrupted or not, and whatever else used the global RNG.
    images = []
    for slot, index in enumerate(indices):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((seed, step, slot, int(index))) % (2**63))
            images.append(transform(load_rgb(paths[index])))
    return torch.stack(images)


class TrainingLoop:
    """Trains ``adapted`` in place, with the training settings it was built with."""

    def __init__(self, adapted: AdaptedClip):
        self.adapted, self.settings = adapted, adapted.settings.train
        params = adapted.trainable_parameters()
        if not params:
            raise TrainingError("nothing to train: the chosen encoders have no such parameters.")
        self.trainable_count = sum(p.numel() for p in params)
        self.optimizer = torch.optim.AdamW(params, lr=self.settings.lr,
                                           weight_decay=self.settings.weight_decay)
        self.scaler = torch.amp.GradScaler(adapted.device.type,
                                           enabled=adapted.dtype == torch.float16)
        cfg = adapted.clip.visual.preprocess_cfg
        self.transform = train_transform(cfg["size"][0], cfg["mean"], cfg["std"],
                                         self.settings.crop_scale)

    def _settings_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self.settings)))

    def _resume(self, store: CheckpointStore | None, scheduler) -> Progress:
        """A fresh start, or where the checkpoint in ``store`` left off."""
        if store is None or not store.exists():
            return Progress(best=self.adapted.state())
        if store.settings() != self._settings_json():
            raise TrainingError(
                f"checkpoint {store.folder} was made with other training settings; delete it "
                "to start afresh, or restore the settings to resume.")
        saved = store.load()
        try:
            self.adapted.load_state(saved.trainable)
        except ValueError as exc:
            raise TrainingError(f"checkpoint {store.folder}: {exc}; delete it to start "
                                "afresh.") from None
        state = saved.state
        self.optimizer.load_state_dict(state.pop("optimizer"))
        scheduler.load_state_dict(state.pop("scheduler"))
        self.scaler.load_state_dict(state.pop("scaler"))
        rng = state.pop("rng")
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():  # LoRA's dropout on a GPU draws here
            torch.cuda.set_rng_state(rng["cuda"])
        logger.info("resuming from %s at step %d", store.folder, state["step"])
        return Progress(best=saved.best, **state)

    def _step(self, paths: Sequence[str], labels: torch.Tensor, indices: np.ndarray,
              step: int) -> tuple[float, int]:
        """One optimizer step on a batch; returns its mean loss and correct count."""
        s, device = self.settings, self.adapted.device
        images = _load_images(paths, indices, self.transform, s.seed, step)
        if device.type == "cuda":
            images = images.pin_memory()
        targets = labels[indices]
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, correct = 0.0, 0
        for chunk, share in micro_batches(len(indices), s.batch_size // s.grad_accumulation):
            x = images[chunk].to(device, non_blocking=True)
            y = targets[chunk].to(device)
            with autocast(device, self.adapted.dtype):
                logits, align = self.adapted(x)
                loss = F.cross_entropy(logits.float(), y)
                if align is not None and s.text_alignment_weight > 0:
                    loss = loss + s.text_alignment_weight * F.cross_entropy(align.float(), y)
            self.scaler.scale(loss * share).backward()
            loss_sum += float(loss.detach()) * share
            correct += int((logits.argmax(1) == y).sum())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss_sum, correct

    def _checkpoint(self, store: CheckpointStore, run: Progress, scheduler) -> None:
        state = {"optimizer": self.optimizer.state_dict(), "rng": rng_state(),
                 "scheduler": scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 **run.state()}
        store.save(Checkpoint(self.adapted.state(), run.best, state), self._settings_json())

    def fit(self, train_paths: Sequence[str], train_labels: Sequence[int],
            val_paths: Sequence[str], val_labels: Sequence[int], eval_transform,
            total_steps: int, checkpoint_dir: Path | None = None) -> TrainResult:
        """Train for ``total_steps`` optimizer steps and keep the state ``select`` names.
        With ``checkpoint_dir``, a run that was interrupted resumes from its last
        checkpoint there."""
        if self.adapted.device.type == "cpu":
            tune_cpu_allocator()
        memory = PeakMemory(self.adapted.device).start()
        s = self.settings
        labels = torch.as_tensor(np.asarray(train_labels), dtype=torch.long)
        val_y = np.asarray(val_labels)
        batches = EpochBatches(len(train_paths), s.batch_size, s.seed)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=total_steps, eta_min=s.min_lr)
        store = CheckpointStore(checkpoint_dir / "last") if checkpoint_dir else None
        run = self._resume(store, scheduler)
        start = time.perf_counter() - run.elapsed
        self.adapted.train()
        bar = tqdm(total=total_steps, initial=run.step, desc=f"Training {s.method}", unit="step")
        while run.step < total_steps and not run.stopped_early:
            indices = batches.indices(run.step)
            loss, correct = self._step(train_paths, labels, indices, run.step)
            scheduler.step()
            run.step += 1
            record = {"step": run.step, "loss": loss, "train_accuracy": correct / len(indices),
                      "lr": scheduler.get_last_lr()[0], "val_accuracy": math.nan}
            if s.eval_every and (run.step % s.eval_every == 0 or run.step == total_steps):
                logits = self.adapted.predict(val_paths, eval_transform)
                record["val_accuracy"] = float((logits.argmax(1) == val_y).mean())
                run.observe(record["val_accuracy"], self.adapted.state, s.patience)
            run.history.append(record)
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{record['train_accuracy']:.2f}")
            bar.update(1)
            done = run.stopped_early or run.step == total_steps
            if store is not None and (run.step % s.checkpoint_every == 0 or done):
                run.elapsed = time.perf_counter() - start
                self._checkpoint(store, run, scheduler)
        bar.close()
        self.adapted.eval()
        if s.select == "best_val":
            self.adapted.load_state(run.best)
        return self._result(run, time.perf_counter() - start, memory)

    def _result(self, run: Progress, seconds: float, memory: PeakMemory) -> TrainResult:
        best_val = self.settings.select == "best_val"
        return TrainResult(
            history=pd.DataFrame(run.history),
            trainable_parameters=self.trainable_count,
            wall_seconds=seconds,
            peak_memory_mb=memory.peak_mb(),
            peak_memory_kind=memory.kind,
            best_step=run.best_step,
            best_val_accuracy=run.best_acc if run.best_acc >= 0 else math.nan,
            stopped_early=run.stopped_early,
            steps_done=run.step,
            selected="best_val" if best_val else "last",
            selected_step=run.best_step if best_val else run.step,
        )
