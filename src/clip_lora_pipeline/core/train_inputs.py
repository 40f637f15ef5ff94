"""What each training step sees: its augmented images and their labels, on the training
device, for the steps still to run.

Batches come from ``EpochBatches`` (they depend on the step alone) and each sample's
crop and flip from (seed, step, slot) (``core.augment``), so a resumed run sees the same
batches as an uninterrupted one, whichever way they are made:

- **from the pixel cache** (the default when the training images fit in
  ``runtime.pixel_cache_mb``): each image decoded once, kept as uint8 on the training
  device, cropped and resized there;
- **from the files**, by a DataLoader whose batch sampler yields (step, slot, index):
  ``runtime.num_workers`` processes decode, crop and resize, with pinned memory and
  prefetching on CUDA.

On a CPU the two give identical batches, for any number of workers. The validation
images are preprocessed once (``Validation``). In a multi-process run
(``core.distributed``) each process makes its share of every batch and validates its
share of the validation set; its samples keep their slots in the global batch, so the
shares together are the one-process batch. With generated images
(``core.generated``), a step's plan says which image each slot feeds and which
generated ones join it; those are numbered after the training images and made the same
two ways, and the batch comes with its ``GeneratedBatch``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.adapted import AdaptedClip
from clip_lora_pipeline.core.augment import Augmentation
from clip_lora_pipeline.core.batches import EpochBatches
from clip_lora_pipeline.core.distributed import Ranks
from clip_lora_pipeline.core.embed import image_loader
from clip_lora_pipeline.core.generated import BatchPlan, GeneratedBatch, GeneratedImages
from clip_lora_pipeline.core.pixel_cache import (
    PixelCache,
    cache_bytes,
    decode_for_training,
)

logger = logging.getLogger(__name__)

# step, images, labels (on the device), and the GeneratedBatch when training with one
Batch = tuple[int, torch.Tensor, torch.Tensor] | tuple[int, torch.Tensor, torch.Tensor,
                                                       GeneratedBatch]
Rows = list[tuple[int, int]]  # (draw slot, image index) of each image a step decodes


@dataclass(frozen=True)
class InputSettings:
    """``num_workers``: loader processes decoding training files (0 = this process);
    ``pixel_cache_mb``: the most memory the decoded training images may take on the
    training device (0 = decode every draw from the file)."""

    num_workers: int = 0
    pixel_cache_mb: int = 4096


def fits_cache(paths: Sequence[str], image_size: int, budget_mb: int) -> bool:
    """Whether the decoded images would fit in ``budget_mb`` (image headers only)."""
    if budget_mb <= 0:
        return False
    sizes = []
    for path in paths:
        with storage.open_for_read(path) as file, Image.open(file) as image:
            sizes.append(image.size)
    need = cache_bytes(sizes, image_size)
    if need > budget_mb * 2**20:
        logger.warning("the %d training images need %.0f MB decoded, more than "
                       "runtime.pixel_cache_mb (%d): decoding them at every draw instead "
                       "(slower; raise the limit if the device has the memory).",
                       len(paths), need / 2**20, budget_mb)
        return False
    return True


class StepSampler(Sampler):
    """A batch sampler: for each step from ``start`` to ``stop``, [(step, slot, index)]
    for the (draw slot, index) ``rows(step)`` gives."""

    def __init__(self, rows, start: int, stop: int):
        self.rows, self.start, self.stop = rows, start, stop

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in range(self.start, self.stop):
            yield [(step, slot, index) for slot, index in self.rows(step)[0]]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    """The loader's batch; empty for a process whose share of a small batch is empty."""
    return default_collate(items) if items else _nothing()


def _nothing() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty((0, 3, 0, 0), dtype=torch.uint8), torch.empty(0, dtype=torch.int64)


class AugmentedFiles(Dataset):
    """Item (step, slot, index): the image's crop (uint8, flipped or not) and its label."""

    def __init__(self, paths: Sequence[str], labels: np.ndarray, augmentation: Augmentation,
                 seed: int):
        self.paths, self.labels = list(paths), labels
        self.augmentation, self.seed = augmentation, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int, int]):
        step, slot, index = key
        image = decode_for_training(self.paths[index], self.augmentation.size)
        draw = self.augmentation.draw(self.seed, step, slot, image.shape[1], image.shape[2])
        return self.augmentation.crop(image, draw), int(self.labels[index])


class TrainingBatches:
    """The training set's batches on ``device``, from the cache when it fits."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], augmentation: Augmentation,
                 batches: EpochBatches, device: torch.device, settings: InputSettings,
                 generated: GeneratedImages | None = None, ranks: Ranks = Ranks()):
        self.paths, self.labels = list(paths), np.asarray(labels, dtype=np.int64)
        self.ranks = ranks
        self.generated = generated
        if generated is not None:  # numbered after the training images, with their labels
            self.paths += generated.paths
            self.labels = np.concatenate([self.labels, self.labels[generated.source_of]])
        self.augmentation, self.batches, self.device = augmentation, batches, device
        self.settings = settings
        self.cached = fits_cache(self.paths, augmentation.size, settings.pixel_cache_mb)
        self._cache: PixelCache | None = None

    def steps(self, start: int, stop: int) -> Iterator[Batch]:
        """(step, images, labels) for steps ``start`` .. ``stop`` - 1."""
        return self._from_cache(start, stop) if self.cached else self._from_files(start, stop)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda" and not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def _rows(self, step: int) -> tuple[Rows, BatchPlan | None]:
        """The images ``step`` decodes, and its plan when training with generated ones.
        Several processes: this one's share of the batch; with generated images, the
        whole batch (its loss weights are the whole batch's), cut in ``_batch``."""
        indices = self.batches.indices(step)
        if self.generated is None:
            rows = [(slot, int(i)) for slot, i in enumerate(indices)]
            return rows[self.ranks.part(len(rows))], None
        plan = self.generated.plan(self.batches.seed, step, indices)
        return plan.rows, plan

    def _batch(self, step: int, images: torch.Tensor, labels: torch.Tensor,
               plan: BatchPlan | None) -> Batch:
        if plan is None:
            return step, images, labels
        generated = GeneratedBatch.from_plan(plan, images[plan.size:], self.generated.settings)
        if self.ranks.world > 1:  # this process's share, as a micro-batch is cut
            share = self.ranks.part(plan.size)
            return step, images[share], labels[share], generated.chunk(share)
        return step, images[:plan.size], labels[:plan.size], generated

    def _from_cache(self, start: int, stop: int) -> Iterator[Batch]:
        if self._cache is None:
            self._cache = PixelCache.decode(self.paths, self.augmentation.size, self.device)
        cache, seed = self._cache, self.batches.seed
        for step in range(start, stop):
            rows, plan = self._rows(step)
            if not rows:  # this process's share of a small batch
                yield step, *(t.to(self.device) for t in _nothing())
                continue
            indices = [i for _, i in rows]
            draws = [self.augmentation.draw(seed, step, slot, cache.heights[i], cache.widths[i])
                     for slot, i in rows]
            images = self.augmentation.batch([cache[i] for i in indices], draws)
            labels = self._to_device(torch.from_numpy(self.labels[indices]))
            yield self._batch(step, images, labels, plan)

    def _from_files(self, start: int, stop: int) -> Iterator[Batch]:
        workers, cuda = self.settings.num_workers, self.device.type == "cuda"
        loader = DataLoader(
            AugmentedFiles(self.paths, self.labels, self.augmentation, self.batches.seed),
            batch_sampler=StepSampler(self._rows, start, stop), num_workers=workers,
            collate_fn=_collate,
            pin_memory=cuda, prefetch_factor=4 if workers else None,
            generator=torch.Generator())  # its worker seeds would draw from dropout's RNG
        for step, (crops, labels) in zip(range(start, stop), loader):
            images = self.augmentation.finish(crops.to(self.device, non_blocking=True))
            plan = self._rows(step)[1] if self.generated is not None else None
            yield self._batch(step, images, labels.to(self.device, non_blocking=True), plan)


class Validation:
    """The validation accuracy of the model as it stands. The images are preprocessed
    once and kept on the device when they fit in ``budget_mb`` as float32, else decoded
    again (by ``num_workers`` processes) at each evaluation."""

    def __init__(self, adapted: AdaptedClip, paths: Sequence[str], labels: Sequence[int],
                 transform, num_workers: int, budget_mb: int, batch_size: int = 64,
                 ranks: Ranks = Ranks()):
        share, self.ranks, self.total = ranks.part(len(paths)), ranks, len(paths)
        self.adapted, self.paths, self.transform = adapted, list(paths)[share], transform
        self.labels, self.num_workers = np.asarray(labels)[share], num_workers
        self.batch_size = batch_size
        size = adapted.clip.visual.preprocess_cfg["size"]
        self.cached = len(self.paths) * 3 * size[0] * size[1] * 4 <= budget_mb * 2**20
        self._images: torch.Tensor | None = None

    def accuracy(self) -> float:
        if self.ranks.world > 1:  # the correct counts of every process's share
            correct = float((self._logits().argmax(1) == self.labels).sum()) if self.paths else 0
            return self.ranks.total(correct, self.adapted.device) / self.total
        return float((self._logits().argmax(1) == self.labels).mean())

    def _logits(self) -> np.ndarray:
        if not self.cached:
            return self.adapted.predict(self.paths, self.transform, self.batch_size,
                                        self.num_workers)
        if self._images is None:
            loader = image_loader(pd.DataFrame({"path": self.paths}), "", self.transform,
                                  self.adapted.device, self.batch_size, self.num_workers)
            self._images = torch.cat([b.to(self.adapted.device) for b, _ in loader])
        return self.adapted.predict_batches(self._images.split(self.batch_size))
