"""Few-shot training images decoded once, kept as uint8 on the training device.

At 16 shots CLIP-LoRA's recipe draws each training image about 500 x 32 / 16 = 1,000
times; decoding the JPEG each time is most of a step's input cost (3.8 ms per photo on
one core, against a fraction of a millisecond to crop and resize it from memory:
benchmarks/README.md). Images whose shorter side exceeds ``MAX_SIDE_FACTOR`` x the
model's input size are stored shrunk to that (bicubic, like the crop's own resize): the
smallest crops the recipe draws (8% of the area) still have more pixels than the model
sees, and a 4000-pixel photo does not take 48 MB.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from clip_lora_pipeline.core.images import load_rgb
from clip_lora_pipeline.core.runtime import usable_cpus

logger = logging.getLogger(__name__)

MAX_SIDE_FACTOR = 2


def stored_size(width: int, height: int, image_size: int) -> tuple[int, int]:
    """(width, height) of an image as the cache keeps it."""
    limit = MAX_SIDE_FACTOR * image_size
    shorter = min(width, height)
    if shorter <= limit:
        return width, height
    return max(1, round(width * limit / shorter)), max(1, round(height * limit / shorter))


def cache_bytes(sizes: Sequence[tuple[int, int]], image_size: int) -> int:
    """What caching images of these (width, height) takes: 3 bytes a pixel."""
    return sum(3 * w * h for w, h in (stored_size(w, h, image_size) for w, h in sizes))


def decode_for_training(path: str, image_size: int) -> torch.Tensor:
    """The image as training crops it: uint8 3 x H x W, shrunk per ``stored_size``."""
    image = load_rgb(path)
    size = stored_size(*image.size, image_size)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    # A 3 x H x W view of the H x W x 3 pixels: the resize runs about 20% faster on
    # this channels-last layout than on a contiguous copy (benchmarks/README.md).
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


class PixelCache:
    """uint8 3 x H x W images, in the order of the paths they were decoded from."""

    def __init__(self, images: list[torch.Tensor]):
        self.images = images
        self.heights = np.array([image.shape[1] for image in images])
        self.widths = np.array([image.shape[2] for image in images])

    @classmethod
    def decode(cls, paths: Sequence[str], image_size: int, device: torch.device) -> PixelCache:
        """Decode every image once, on threads (PIL releases the GIL), onto ``device``."""
        def load(path: str) -> torch.Tensor:
            return decode_for_training(path, image_size)

        with ThreadPoolExecutor(max_workers=usable_cpus()) as pool:
            images = [image.to(device) for image in tqdm(
                pool.map(load, paths), total=len(paths), desc="Caching training images",
                unit="image", disable=len(paths) < 64)]
        return cls(images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]

    def __len__(self) -> int:
        return len(self.images)
