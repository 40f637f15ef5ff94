"""One training step's loss (``training_loss``: the head's cross-entropy, the
text-alignment term, generated images' terms) and the log that keeps each step's loss
on the device until the loop reads it (``StepLog``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from clip_lora_pipeline.core.adapted import AdaptedClip
from clip_lora_pipeline.core.generated import GeneratedBatch
from clip_lora_pipeline.core.runtime import autocast, no_autocast


def training_loss(adapted: AdaptedClip, images: torch.Tensor, labels: torch.Tensor,
                  generated: GeneratedBatch | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's mean loss and its count of correct predictions, both left on the
    device: nothing here reads a value back to the host (a test runs it on ``meta``).
    The model runs under autocast; the loss in fp32 with autocast off. ``generated``:
    the batch's generated images, encoded with it, and its loss terms (``core.generated``)."""
    weight = adapted.settings.train.text_alignment_weight
    extra = generated is not None and len(generated.images) > 0
    with autocast(adapted.device, adapted.dtype):
        features = adapted.image_features(
            torch.cat([images, generated.images]) if extra else images)
        logits, align = adapted.head(features[:len(labels)] if extra else features)
    with no_autocast(adapted.device):
        loss = (F.cross_entropy(logits.float(), labels) if generated is None
                else generated.loss(logits.float(), labels, features))
        if align is not None and weight > 0:
            loss = loss + weight * F.cross_entropy(align.float(), labels)
    return loss, (logits.argmax(1) == labels).sum()


class StepLog:
    """Each step's loss and correct count, kept on the device until the loop needs them
    (a validation, a checkpoint, the progress bar every ``LOG_EVERY`` steps), then read
    back in one transfer: reading them every step would make the host wait for the GPU
    to finish the step before it can queue the next."""

    def __init__(self, history: list[dict[str, Any]]):
        self.history = history
        self.pending: list[tuple[dict[str, Any], torch.Tensor, int]] = []

    def add(self, record: dict[str, Any], loss: torch.Tensor, correct: torch.Tensor,
            size: int) -> None:
        self.pending.append((record, torch.stack([loss.detach().float(), correct.float()]),
                             size))

    def flush(self) -> dict[str, Any] | None:
        """Complete and append the pending records; returns the last one."""
        if not self.pending:
            return self.history[-1] if self.history else None
        values = torch.stack([v for _, v, _ in self.pending]).cpu().tolist()
        for (record, _, size), (loss, correct) in zip(self.pending, values):
            record.update(loss=loss, train_accuracy=correct / size)
            self.history.append(record)
        self.pending = []
        return self.history[-1]
