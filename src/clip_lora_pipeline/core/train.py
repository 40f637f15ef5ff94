"""Fine-tuning CLIP with few trainable parameters (LoRA or BitFit) for classification.

The trainer is deterministic on CPU for a seed, checkpoints only what trains (atomically,
every N steps) and resumes an interrupted run to the same result as an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision import transforms as T
from tqdm.auto import tqdm

from clip_lora_pipeline.core.images import load_rgb
from clip_lora_pipeline.core.lora import (
    BitFitSettings,
    LoraSettings,
    bitfit_parameters,
    freeze_all_but,
    peft_config,
    use_fast_dropout,
)
from clip_lora_pipeline.core.models import autocast, tune_cpu_allocator
from clip_lora_pipeline.core.prompts import encode_text_trimmed
from clip_lora_pipeline.core.resources import PeakMemory

logger = logging.getLogger(__name__)

METHODS = ("lora", "bitfit")
HEADS = ("text", "linear")
LOGIT_SCALE = 100.0  # CLIP-LoRA: logits = 100 * cosine


class TrainingError(ValueError):
    """Training parameters or inputs that cannot work."""


@dataclass(frozen=True)
class TrainSettings:
    """Defaults follow CLIP-LoRA: AdamW 2e-4, wd 1e-2, cosine to 1e-6, 500 x shots
    iterations at batch 32, RandomResizedCrop(scale 0.08-1, bicubic) + flip."""

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
    eval_every: int = 50
    patience: int | None = None  # evaluations without improvement before stopping
    checkpoint_every: int = 50
    seed: int = 1
    crop_scale: tuple[float, float] = (0.08, 1.0)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrainSettings:
        unknown = sorted(set(params) - set(cls.__dataclass_fields__))
        if unknown:
            raise TrainingError(f"training parameters {unknown} are unknown; known: "
                                f"{sorted(cls.__dataclass_fields__)}.")
        values = dict(params)
        if "crop_scale" in values:
            values["crop_scale"] = tuple(values["crop_scale"])
        settings = cls(**values)
        if settings.method not in METHODS or settings.head not in HEADS:
            raise TrainingError(f"training.method must be one of {METHODS} and head one of {HEADS}.")
        if settings.batch_size % settings.grad_accumulation:
            raise TrainingError("training.batch_size must be divisible by grad_accumulation.")
        return settings

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


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


class _Batches:
    """Deterministic shuffled batches; the position is part of the checkpoint."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def indices(self, step: int) -> np.ndarray:
        per_epoch = max(1, self.n // self.batch_size)
        epoch, position = divmod(step, per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        if self.n < self.batch_size:
            return np.resize(order, self.batch_size)
        return order[position * self.batch_size:(position + 1) * self.batch_size]


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

    # Checkpoints -------------------------------------------------------------------
    def _save_checkpoint(self, folder: Path, state: dict[str, Any], best: dict[str, torch.Tensor]):
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            save_file({n: p.detach().cpu().contiguous() for n, p in self.params.items()},
                      str(staging / "trainable.safetensors"))
            save_file(best, str(staging / "best.safetensors"))
            torch.save(state, staging / "state.pt")
            (staging / "settings.json").write_text(json.dumps(asdict(self.settings), indent=1))
            previous = folder.with_name(folder.name + ".old")
            if folder.exists():
                os.replace(folder, previous)
            os.replace(staging, folder)
            shutil.rmtree(previous, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _load_checkpoint(self, folder: Path):
        saved = json.loads((folder / "settings.json").read_text())
        if saved != json.loads(json.dumps(asdict(self.settings))):
            raise TrainingError(
                f"checkpoint {folder} was made with other training settings; delete it to "
                "start afresh, or restore the settings to resume."
            )
        trainable = load_file(str(folder / "trainable.safetensors"))
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(trainable[name])
        best = load_file(str(folder / "best.safetensors"))
        state = torch.load(folder / "state.pt", weights_only=True)
        return state, best

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
    def fit(self, train_paths: Sequence[str], train_labels: Sequence[int],
            val_paths: Sequence[str], val_labels: Sequence[int], eval_transform,
            total_steps: int, checkpoint_dir: Path | None = None) -> TrainResult:
        """Train for ``total_steps`` optimizer steps. With ``checkpoint_dir``, a run that
        was interrupted resumes from its last checkpoint there."""
        if self.device.type == "cpu":
            tune_cpu_allocator()
        memory = PeakMemory(self.device).start()
        s = self.settings
        labels = torch.as_tensor(np.asarray(train_labels), dtype=torch.long)
        val_y = np.asarray(val_labels)
        batches = _Batches(len(train_paths), s.batch_size, s.seed)
        scheduler = self._scheduler(total_steps)
        history: list[dict[str, Any]] = []
        step, best_acc, best_step, bad_evals, elapsed = 0, -1.0, 0, 0, 0.0
        best = {n: p.detach().cpu().clone() for n, p in self.params.items()}
        folder = checkpoint_dir / "last" if checkpoint_dir else None
        if folder is not None and not folder.exists():
            # A kill between the two renames of _save_checkpoint leaves only the old one.
            previous = folder.with_name(folder.name + ".old")
            if previous.exists():
                os.replace(previous, folder)
        if folder is not None and folder.exists():
            state, best = self._load_checkpoint(folder)
            self.optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng"]["torch"])
            step, best_acc, best_step = state["step"], state["best_acc"], state["best_step"]
            bad_evals, elapsed, history = state["bad_evals"], state["elapsed"], state["history"]
            logger.info("resuming from %s at step %d of %d", folder, step, total_steps)
        start = time.perf_counter() - elapsed
        stopped_early = False
        self.model.train()
        micro = s.batch_size // s.grad_accumulation
        bar = tqdm(total=total_steps, initial=step, desc=f"Training {s.method}", unit="step")
        while step < total_steps:
            indices = batches.indices(step)
            images = _load_images(train_paths, indices, self.transform, s.seed, step)
            if self.device.type == "cuda":
                images = images.pin_memory()
            targets = labels[indices]
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum, correct = 0.0, 0
            for part in range(s.grad_accumulation):
                chunk = slice(part * micro, (part + 1) * micro)
                x = images[chunk].to(self.device, non_blocking=True)
                y = targets[chunk].to(self.device)
                with autocast(self.device, self.dtype):
                    logits, align = self.model(x)
                    loss = F.cross_entropy(logits.float(), y)
                    if align is not None and s.text_alignment_weight > 0:
                        loss = loss + s.text_alignment_weight * F.cross_entropy(align.float(), y)
                self.scaler.scale(loss / s.grad_accumulation).backward()
                loss_sum += float(loss.detach()) / s.grad_accumulation
                correct += int((logits.argmax(1) == y).sum())
            self.scaler.step(self.optimizer)
            self.scaler.update()
            scheduler.step()
            step += 1
            record = {"step": step, "loss": loss_sum, "train_accuracy": correct / len(indices),
                      "lr": scheduler.get_last_lr()[0], "val_accuracy": math.nan}
            if step % s.eval_every == 0 or step == total_steps:
                logits = self.predict(val_paths, eval_transform)
                record["val_accuracy"] = float((logits.argmax(1) == val_y).mean())
                if record["val_accuracy"] > best_acc:
                    best_acc, best_step, bad_evals = record["val_accuracy"], step, 0
                    best = {n: p.detach().cpu().clone() for n, p in self.params.items()}
                else:
                    bad_evals += 1
                if s.patience is not None and bad_evals >= s.patience:
                    stopped_early = True
            history.append(record)
            bar.set_postfix(loss=f"{loss_sum:.3f}", acc=f"{record['train_accuracy']:.2f}")
            bar.update(1)
            done = stopped_early or step == total_steps
            if folder is not None and (step % s.checkpoint_every == 0 or done):
                state = {
                    "optimizer": self.optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(), "rng": _rng_state(), "step": step,
                    "best_acc": best_acc, "best_step": best_step, "bad_evals": bad_evals,
                    "elapsed": time.perf_counter() - start, "history": history,
                }
                self._save_checkpoint(folder, state, best)
            if stopped_early:
                break
        bar.close()
        with torch.no_grad():  # keep the best validated state
            for name, param in self.params.items():
                param.copy_(best[name])
        return TrainResult(
            history=pd.DataFrame(history),
            trainable_parameters=self.trainable_count,
            wall_seconds=time.perf_counter() - start,
            peak_memory_mb=memory.peak_mb(),
            peak_memory_kind=memory.kind,
            best_step=best_step,
            best_val_accuracy=best_acc,
            stopped_early=stopped_early,
            steps_done=step,
        )

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Only the trained parameters (LoRA matrices or biases, plus a linear head)."""
        return {n: p.detach().cpu().contiguous() for n, p in self.params.items()}

    def merged_clip(self) -> nn.Module:
        """A plain CLIP with the adapters merged in (LoRA) or as trained (BitFit)."""
        if self.peft_model is not None:
            return copy.deepcopy(self.peft_model).merge_and_unload()
        return copy.deepcopy(self.model.clip)
