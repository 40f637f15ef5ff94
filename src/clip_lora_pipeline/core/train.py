"""Fine-tuning CLIP with few trainable parameters (LoRA or BitFit) for classification.

The trainer is deterministic on CPU for a seed, checkpoints only what trains (atomically,
every N steps) and resumes an interrupted run to the same result as an uninterrupted one.
Batches come from ``core.batches`` (shuffled epochs, partial last batch).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms as T
from tqdm.auto import tqdm

from clip_lora_pipeline.core import checkpoints
from clip_lora_pipeline.core.batches import EpochBatches, micro_batches
from clip_lora_pipeline.core.bitfit import (
    BitFitSettings,
    bitfit_parameters,
    freeze_all_but,
)
from clip_lora_pipeline.core.dropout import use_fast_dropout
from clip_lora_pipeline.core.images import load_rgb
from clip_lora_pipeline.core.lora import LoraSettings, peft_config
from clip_lora_pipeline.core.prompts import encode_text_trimmed
from clip_lora_pipeline.core.runtime import PeakMemory, autocast, tune_cpu_allocator
from clip_lora_pipeline.core.settings import from_params as settings_from_params

logger = logging.getLogger(__name__)

METHODS = ("lora", "bitfit")
HEADS = ("text", "linear")
SELECTS = ("last", "best_val")
LOGIT_SCALE = 100.0  # CLIP-LoRA: logits = 100 * cosine


class TrainingError(ValueError):
    """Training parameters or inputs that cannot work."""


@dataclass(frozen=True)
class TrainSettings:
    """Defaults follow CLIP-LoRA: AdamW 2e-4, wd 1e-2, cosine to 1e-6, 500 x shots
    optimizer steps at batch 32 (shuffled epochs, partial last batch), RandomResizedCrop
    (scale 0.08-1, bicubic) + flip, and the last state kept (``select: last``; CLIP-LoRA
    never validates). ``seed`` None: the seed ``build_trainer`` is given (the few-shot
    seed), so one seed drives both the sample and the training."""

    method: str = "lora"
    head: str = "text"
    text_alignment_weight: float = 0.0
    template: str = "a photo of a {}."
    lr: float = 2e-4
    weight_decay: float = 1e-2
    min_lr: float = 1e-6
    iterations_per_shot: int = 500
    max_steps: int | None = None  # overrides iterations_per_shot x shots
    batch_size: int = 32
    grad_accumulation: int = 1
    eval_every: int | None = 50  # validation every N steps (curves); None = never
    patience: int | None = None  # evaluations without improvement before stopping
    checkpoint_every: int = 50
    seed: int | None = None
    select: str = "last"  # last: the final state; best_val: the best validated state
    crop_scale: tuple[float, float] = (0.08, 1.0)

    def __post_init__(self):
        if self.method not in METHODS or self.head not in HEADS:
            raise TrainingError(f"training.method must be one of {METHODS} and head one of {HEADS}.")
        if self.select not in SELECTS:
            raise TrainingError(f"training.select must be one of {SELECTS}, got {self.select!r}.")
        if self.batch_size < 1 or self.grad_accumulation < 1 \
                or self.batch_size % self.grad_accumulation:
            raise TrainingError("training.batch_size must be a positive multiple of "
                                "grad_accumulation.")
        if self.eval_every is None and self.select == "best_val":
            raise TrainingError("training.select: best_val needs eval_every; set it, or "
                                "select: last.")
        if self.patience is not None and self.select != "best_val":
            # Stopping at a plateau would keep a state that is neither best nor final.
            raise TrainingError("training.patience needs select: best_val; set patience: null "
                                "or select: best_val.")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrainSettings:
        return settings_from_params(cls, params, "training", TrainingError)

    def total_steps(self, shots: int | None) -> int:
        if self.max_steps is not None:
            return self.max_steps
        if shots is None:
            raise TrainingError("with shots: null set training.max_steps.")
        return self.iterations_per_shot * shots


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
    selected: str  # which state the trainer holds now: "last" or "best_val"
    selected_step: int
    summary: dict[str, Any] = field(default_factory=dict)


def train_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                    crop_scale: tuple[float, float]) -> T.Compose:
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=crop_scale,
                            interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


class ClipClassifier(nn.Module):
    """CLIP plus a head: 'text' = 100 x cosine with the class prompts' embeddings
    (recomputed while the text tower trains), 'linear' = a linear layer on the
    normalised image features, initialised from the text embeddings."""

    def __init__(self, clip: nn.Module, class_tokens: torch.Tensor, head: str):
        super().__init__()
        self.clip = clip
        device = next(clip.parameters()).device
        self.register_buffer("class_tokens", class_tokens.to(device), persistent=False)
        self.head_kind = head
        # A frozen text tower gives the same class embeddings every step: compute once.
        self.text_trains = any(
            p.requires_grad for n, p in clip.named_parameters() if not n.startswith("visual.")
        )
        self._frozen_text: torch.Tensor | None = None
        self.linear = None
        if head == "linear":
            with torch.no_grad():
                text = self.text_features()
            self.linear = nn.Linear(text.shape[1], text.shape[0])
            with torch.no_grad():
                self.linear.weight.copy_(text * LOGIT_SCALE)
                self.linear.bias.zero_()

    def text_features(self) -> torch.Tensor:
        if self.text_trains:
            return F.normalize(encode_text_trimmed(self.clip, self.class_tokens).float(), dim=-1)
        if self._frozen_text is None:
            with torch.no_grad():
                self._frozen_text = F.normalize(
                    encode_text_trimmed(self.clip, self.class_tokens).float(), dim=-1)
        return self._frozen_text

    def forward(self, images: torch.Tensor, text: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Head logits, plus (training the 'linear' head) the text-alignment logits.
        ``text``: class embeddings already computed, for many batches without training."""
        features = F.normalize(self.clip.encode_image(images).float(), dim=-1)
        text = self.text_features() if text is None else text
        text_logits = LOGIT_SCALE * features @ text.T
        if self.head_kind == "text":
            return text_logits, None
        return self.linear(features), text_logits if self.training else None


def _load_images(paths: Sequence[str], indices: np.ndarray, transform, seed: int, step: int):
    # Each sample's augmentation draws from its own generator, so the batch is the same
    # whether the run was interrupted or not, and whatever else used the global RNG.
    images = []
    for slot, index in enumerate(indices):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((seed, step, slot, int(index))) % (2**63))
            images.append(transform(load_rgb(paths[index])))
    return torch.stack(images)


class Trainer:
    """Trains ``clip`` (an unfused open_clip model) on a manifest of images."""

    def __init__(self, clip: nn.Module, tokenizer, class_names: Sequence[str],
                 settings: TrainSettings, device: torch.device, dtype: torch.dtype,
                 lora: LoraSettings | None = None, bitfit: BitFitSettings | None = None,
                 image_size: int = 224, mean=(0.48145466, 0.4578275, 0.40821073),
                 std=(0.26862954, 0.26130258, 0.27577711)):
        if settings.seed is None:
            raise TrainingError("training.seed is None (the few-shot seed): pass that seed to "
                                "build_trainer, or set seed in the method's settings.")
        self.settings, self.device, self.dtype = settings, device, dtype
        torch.manual_seed(settings.seed)  # LoRA's initialisation and dropout draw from it
        if settings.method == "lora":
            from peft import get_peft_model

            self.peft_model = get_peft_model(clip, peft_config(clip, lora or LoraSettings()))
            clip = self.peft_model.base_model.model
            if device.type == "cpu":
                use_fast_dropout(clip)
            trainable = [n for n, p in clip.named_parameters() if "lora_" in n]
        else:
            self.peft_model = None
            trainable = bitfit_parameters(clip, bitfit or BitFitSettings())
        freeze_all_but(clip, trainable)
        tokens = tokenizer([settings.template.format(c) for c in class_names])
        self.model = ClipClassifier(clip, tokens, settings.head).to(device)
        if self.model.linear is not None:
            self.model.linear.requires_grad_(True)
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if not self.params:
            raise TrainingError("nothing to train: the chosen encoders have no such parameters.")
        self.trainable_count = sum(p.numel() for p in self.params.values())
        self.transform = train_transform(image_size, mean, std, settings.crop_scale)
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=settings.lr,
                                           weight_decay=settings.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def _scheduler(self, total: int):
        s = self.settings
        return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total, eta_min=s.min_lr)

    # Evaluation --------------------------------------------------------------------
    def predict(self, paths: Sequence[str], transform, batch_size: int = 64) -> np.ndarray:
        """Head logits for images, in order. No autograd graph: memory stays that of one
        batch however many images, and the class embeddings are computed once."""
        self.model.eval()
        out = []
        # no_grad, not inference_mode: a tensor made here (the frozen text tower's
        # cached class embeddings) is used by training afterwards, and autograd refuses
        # to save inference tensors for backward.
        with torch.no_grad(), autocast(self.device, self.dtype):
            text = self.model.text_features()
            for start in range(0, len(paths), batch_size):
                batch = torch.stack([transform(load_rgb(p)) for p in paths[start:start + batch_size]])
                logits, _ = self.model(batch.to(self.device), text)
                out.append(logits.float().cpu())
        self.model.train()
        return torch.cat(out).numpy()

    # Training ----------------------------------------------------------------------
    def _settings_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self.settings)))

    def _resume(self, folder: Path | None, scheduler) -> checkpoints.Progress:
        """A fresh start, or where the checkpoint in ``folder`` left off."""
        if folder is None or not checkpoints.exists(folder):
            return checkpoints.Progress(best=checkpoints.snapshot(self.params))
        if checkpoints.saved_settings(folder) != self._settings_json():
            raise TrainingError(
                f"checkpoint {folder} was made with other training settings; delete it to "
                "start afresh, or restore the settings to resume."
            )
        state, best = checkpoints.load(folder, self.params)
        self.optimizer.load_state_dict(state.pop("optimizer"))
        scheduler.load_state_dict(state.pop("scheduler"))
        self.scaler.load_state_dict(state.pop("scaler"))
        rng = state.pop("rng")
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():  # LoRA's dropout on a GPU draws here
            torch.cuda.set_rng_state(rng["cuda"])
        logger.info("resuming from %s at step %d", folder, state["step"])
        return checkpoints.Progress(best=best, **state)

    def _step(self, paths: Sequence[str], labels: torch.Tensor, indices: np.ndarray,
              step: int) -> tuple[float, int]:
        """One optimizer step on a batch; returns its mean loss and correct count."""
        s = self.settings
        images = _load_images(paths, indices, self.transform, s.seed, step)
        if self.device.type == "cuda":
            images = images.pin_memory()
        targets = labels[indices]
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, correct = 0.0, 0
        for chunk, share in micro_batches(len(indices), s.batch_size // s.grad_accumulation):
            x = images[chunk].to(self.device, non_blocking=True)
            y = targets[chunk].to(self.device)
            with autocast(self.device, self.dtype):
                logits, align = self.model(x)
                loss = F.cross_entropy(logits.float(), y)
                if align is not None and s.text_alignment_weight > 0:
                    loss = loss + s.text_alignment_weight * F.cross_entropy(align.float(), y)
            self.scaler.scale(loss * share).backward()
            loss_sum += float(loss.detach()) * share
            correct += int((logits.argmax(1) == y).sum())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss_sum, correct

    def fit(self, train_paths: Sequence[str], train_labels: Sequence[int],
            val_paths: Sequence[str], val_labels: Sequence[int], eval_transform,
            total_steps: int, checkpoint_dir: Path | None = None) -> TrainResult:
        """Train for ``total_steps`` optimizer steps and keep the state ``select`` names.
        With ``checkpoint_dir``, a run that was interrupted resumes from its last
        checkpoint there."""
        if self.device.type == "cpu":
            tune_cpu_allocator()
        memory = PeakMemory(self.device).start()
        s = self.settings
        labels = torch.as_tensor(np.asarray(train_labels), dtype=torch.long)
        val_y = np.asarray(val_labels)
        batches = EpochBatches(len(train_paths), s.batch_size, s.seed)
        scheduler = self._scheduler(total_steps)
        folder = checkpoint_dir / "last" if checkpoint_dir else None
        run = self._resume(folder, scheduler)
        start = time.perf_counter() - run.elapsed
        self.model.train()
        bar = tqdm(total=total_steps, initial=run.step, desc=f"Training {s.method}", unit="step")
        while run.step < total_steps and not run.stopped_early:
            indices = batches.indices(run.step)
            loss, correct = self._step(train_paths, labels, indices, run.step)
            scheduler.step()
            run.step += 1
            record = {"step": run.step, "loss": loss, "train_accuracy": correct / len(indices),
                      "lr": scheduler.get_last_lr()[0], "val_accuracy": math.nan}
            if s.eval_every and (run.step % s.eval_every == 0 or run.step == total_steps):
                logits = self.predict(val_paths, eval_transform)
                record["val_accuracy"] = float((logits.argmax(1) == val_y).mean())
                run.observe(record["val_accuracy"], self.params, s.patience)
            run.history.append(record)
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{record['train_accuracy']:.2f}")
            bar.update(1)
            done = run.stopped_early or run.step == total_steps
            if folder is not None and (run.step % s.checkpoint_every == 0 or done):
                run.elapsed = time.perf_counter() - start
                state = {"optimizer": self.optimizer.state_dict(), "rng": checkpoints.rng_state(),
                         "scheduler": scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                         **run.state()}
                checkpoints.save(folder, self.params, run.best, state, self._settings_json())
        bar.close()
        if s.select == "best_val":
            with torch.no_grad():
                for name, param in self.params.items():
                    param.copy_(run.best[name])
        return TrainResult(
            history=pd.DataFrame(run.history),
            trainable_parameters=self.trainable_count,
            wall_seconds=time.perf_counter() - start,
            peak_memory_mb=memory.peak_mb(),
            peak_memory_kind=memory.kind,
            best_step=run.best_step,
            best_val_accuracy=run.best_acc if run.best_acc >= 0 else math.nan,
            stopped_early=run.stopped_early,
            steps_done=run.step,
            selected=s.select,
            selected_step=run.best_step if s.select == "best_val" else run.step,
        )

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Only the trained parameters (LoRA matrices or biases, plus a linear head)."""
        return {n: p.detach().cpu().contiguous() for n, p in self.params.items()}

    def merged_clip(self) -> nn.Module:
        """A plain CLIP with the adapters merged in (LoRA) or as trained (BitFit)."""
        if self.peft_model is not None:
            return copy.deepcopy(self.peft_model).merge_and_unload()
        return copy.deepcopy(self.model.clip)
