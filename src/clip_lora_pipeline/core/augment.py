"""The training augmentation (RandomResizedCrop, bicubic, then a horizontal flip, then
normalisation), with its randomness drawn from an explicit generator per sample.

torchvision's ``RandomResizedCrop`` draws from the global torch RNG, so reproducing a
batch meant reseeding it per image, which reseeds every CUDA generator too (and LoRA's
dropout with them). Here each sample's crop and flip are torchvision's draws from a
generator of its own, seeded from (seed, step, slot): the same for any number of loader
workers, for a resumed run, and for both ways of applying it:

- in a loader worker, on an image it has just decoded;
- on the training device, on uint8 images decoded once (``core.pixel_cache``).

A crop is a view of the uint8 image, resized with torch's antialiased bicubic kernel
(written to match PIL's, which torchvision's recipe uses) and flipped; normalisation
runs once per batch. On a CPU both ways give identical batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

RATIO = (3 / 4, 4 / 3)  # torchvision's default aspect-ratio range
ATTEMPTS = 10  # torchvision's tries before its centre-crop fallback


def sample_seed(*numbers: int) -> int:
    """The seed of one sample's generator, from (seed, step, slot) or (seed, row, view).
    SeedSequence mixes the numbers so that nearby tuples give unrelated streams, the
    same on every platform (unlike ``hash``, whose width depends on the build)."""
    return int(np.random.SeedSequence(numbers).generate_state(1, np.uint64)[0])


def crop_params(width: int, height: int, scale: tuple[float, float],
                generator: torch.Generator, ratio: tuple[float, float] = RATIO
                ) -> tuple[int, int, int, int]:
    """``T.RandomResizedCrop.get_params`` drawing from ``generator``: the same draws in
    the same order, so a generator seeded like the global RNG gives torchvision's crop
    (top, left, height, width). torchvision's own function has no generator argument
    and the global RNG is shared by every thread, hence this copy."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))  # float32, as torchvision computes it
    for _ in range(ATTEMPTS):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(
            float(log_ratio[0]), float(log_ratio[1]), generator=generator)).item()
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            j = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return i, j, h, w
    in_ratio = width / height  # torchvision's fallback: the central crop
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class Draw:
    """One sample's augmentation: its crop box and whether it is flipped."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


@dataclass(frozen=True)
class Augmentation:
    """The training recipe: crop ``scale`` (area fraction) and ``ratio``, output
    ``size``, and the model's normalisation ``mean`` and ``std``."""

    size: int
    scale: tuple[float, float]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    ratio: tuple[float, float] = RATIO

    def draw(self, seed: int, step: int, slot: int, height: int, width: int) -> Draw:
        """The crop and flip of the image in ``slot`` of ``step``'s batch: torchvision's
        draws (``crop_params``, then RandomHorizontalFlip's) from its own generator."""
        generator = torch.Generator().manual_seed(sample_seed(seed, step, slot))
        box = crop_params(int(width), int(height), self.scale, generator, self.ratio)
        return Draw(*box, flip=bool(torch.rand(1, generator=generator) < 0.5))

    def crop(self, image: torch.Tensor, draw: Draw) -> torch.Tensor:
        """``draw``'s crop of a uint8 3 x H x W image, resized to ``size`` x ``size`` and
        flipped where the draw says so."""
        crop = image[None, :, draw.top:draw.top + draw.height, draw.left:draw.left + draw.width]
        size = (self.size, self.size)
        if crop.device.type == "cpu":  # torch's uint8 kernel, made to match PIL's
            out = F.interpolate(crop, size=size, mode="bicubic", antialias=True,
                                align_corners=False)[0]
        else:  # GPUs have no uint8 kernel: resize in float, round as a uint8 result would
            out = F.interpolate(crop.float(), size=size, mode="bicubic", antialias=True,
                                align_corners=False)[0].round_().clamp_(0, 255)
        return out.flip(-1) if draw.flip else out

    def finish(self, crops: torch.Tensor) -> torch.Tensor:
        """Normalise a batch of crops on its device, in one pass: float32."""
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        scale = (1 / (255 * std)).to(crops.device, non_blocking=True)
        shift = (-mean / std).to(crops.device, non_blocking=True)
        return crops.to(torch.float32).mul_(scale).add_(shift)

    def batch(self, images: Sequence[torch.Tensor], draws: Sequence[Draw]) -> torch.Tensor:
        """Crop, resize, flip and normalise uint8 images on one device."""
        return self.finish(torch.stack([self.crop(i, d) for i, d in zip(images, draws)]))
