"""Features of augmented views of few-shot training images, for methods that train on
cached features instead of images (Tip-Adapter(-F), CLAP).

Each (image row, view) draws its augmentation from its own generator seeded from
(seed, row, view): the views do not depend on the batch size, the number of decoding
threads, the order threads finish in, or the global RNG (which is never touched, so
nodes running in other threads are not disturbed either). Duplicate rows of one file
(few-shot repeats) are different rows, so they get different views.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torchvision import transforms as T
from torchvision.transforms import functional as TF
from tqdm.auto import tqdm

from clip_lora_pipeline.core import settings, storage
from clip_lora_pipeline.core.augment import crop_params, sample_seed
from clip_lora_pipeline.core.embed import BatchToTensorNormalize
from clip_lora_pipeline.core.errors import UserError
from clip_lora_pipeline.core.images import load_rgb
from clip_lora_pipeline.core.runtime import autocast, tune_cpu_allocator, usable_cpus


class ViewsError(UserError, ValueError):
    """View settings or inputs that cannot work."""


@dataclass(frozen=True)
class ViewSettings:
    """Defaults follow Tip-Adapter: 10 views per image, each RandomResizedCrop to the
    model's image size (scale 0.5-1, bicubic) then a horizontal flip with p = 0.5."""

    n_views: int = 10
    crop_scale: tuple[float, float] = (0.5, 1.0)

    def __post_init__(self):
        if isinstance(self.n_views, bool) or not isinstance(self.n_views, int) \
                or self.n_views < 1:
            raise ViewsError(f"views.n_views must be an integer >= 1, got {self.n_views!r}.")
        scale = tuple(self.crop_scale)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ViewsError("views.crop_scale must be (low, high) with 0 < low <= high <= 1, "
                             f"got {self.crop_scale!r}.")
        object.__setattr__(self, "crop_scale", (float(scale[0]), float(scale[1])))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ViewSettings:
        return settings.from_params(cls, params, "augmented_views", ViewsError)


def _preprocess_spec(preprocess: Mapping[str, Any] | Sequence) -> tuple[list[int], T.Normalize]:
    """(output size [h, w], normalisation) from open_clip's ``model.visual.preprocess_cfg``
    or an (image_size, mean, std) tuple."""
    if isinstance(preprocess, Mapping):
        size, mean, std = preprocess["size"], preprocess["mean"], preprocess["std"]
    else:
        size, mean, std = preprocess
    size = [int(size), int(size)] if isinstance(size, (int, np.integer)) else [int(s) for s in size]
    return size, T.Normalize(mean, std)


def _image_views(path: str, row: int, size: list[int], settings: ViewSettings,
                 seed: int) -> np.ndarray:
    """One image's views as uint8 (n_views, H, W, 3): decoded once, then cropped and
    flipped per view (``train_transform``'s PIL steps, with this view's generator)."""
    image = load_rgb(path)
    out = np.empty((settings.n_views, size[0], size[1], 3), dtype=np.uint8)
    for view in range(settings.n_views):
        generator = torch.Generator().manual_seed(sample_seed(seed, row, view))
        i, j, h, w = crop_params(image.width, image.height, settings.crop_scale, generator)
        crop = TF.resized_crop(image, i, j, h, w, size, T.InterpolationMode.BICUBIC,
                               antialias=True)
        if torch.rand(1, generator=generator) < 0.5:  # RandomHorizontalFlip's draw
            crop = TF.hflip(crop)
        out[view] = np.asarray(crop)
    return out


def _decoded_chunks(paths: list[str], size: list[int], settings: ViewSettings, seed: int,
                    images_per_chunk: int, threads: int, prefetch: int):
    """uint8 views of ``images_per_chunk`` images at a time, in row order, decoded by a
    pool of threads (PIL releases the GIL, as in ``core.embed.ThreadedBatches``).

    On a CPU (``prefetch`` 0) decoding and encoding take turns, each on every core; on a
    GPU the next chunk is decoded while the current one is encoded. Memory: 1 +
    ``prefetch`` chunks.
    """
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque = deque()
        for start in range(0, len(paths), images_per_chunk):
            rows = range(start, min(start + images_per_chunk, len(paths)))
            pending.append([pool.submit(_image_views, paths[r], r, size, settings, seed)
                            for r in rows])
            if len(pending) > prefetch:
                yield np.concatenate([f.result() for f in pending.popleft()])
        while pending:
            yield np.concatenate([f.result() for f in pending.popleft()])


def encode_views(
    model: torch.nn.Module,
    manifest: pd.DataFrame,
    root: str | Path,
    preprocess: Mapping[str, Any] | Sequence,
    device: torch.device,
    n_views: int = 10,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    seed: int = 1,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 64,
    threads: int | None = None,
    desc: str = "Encoding views",
) -> np.ndarray:
    """L2-normalised float32 features of ``n_views`` augmented views of every manifest
    row: shape (rows, n_views, dim), in manifest order.

    ``preprocess``: ``model.visual.preprocess_cfg`` (size, mean, std) or an
    (image_size, mean, std) tuple. ``batch_size`` views are encoded at once. View
    ``v`` of row ``r`` is the same for any batch size or thread count (``augment.sample_seed``);
    it depends on the row's position, so reordering the manifest changes the views.
    """
    settings = ViewSettings(n_views, tuple(crop_scale))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ViewsError(f"seed must be an integer >= 0, got {seed!r}.")
    if batch_size < 1:
        raise ViewsError(f"batch_size must be >= 1, got {batch_size!r}.")
    if len(manifest) == 0:
        raise ViewsError("cannot encode views of an empty manifest")
    size, normalize = _preprocess_spec(preprocess)
    to_batch = BatchToTensorNormalize(normalize)
    paths = [storage.join(root, p) for p in manifest["path"]]
    if device.type == "cpu":
        tune_cpu_allocator()
    # Whole images per chunk, so each is decoded once; at least one image.
    images_per_chunk = max(1, batch_size // settings.n_views)
    chunks = _decoded_chunks(paths, size, settings, int(seed), images_per_chunk,
                             threads or usable_cpus(),
                             prefetch=1 if device.type == "cuda" else 0)
    out: np.ndarray | None = None
    done = 0
    model.eval()
    bar = tqdm(total=len(paths) * settings.n_views, desc=desc, unit="view", mininterval=1.0)
    with torch.no_grad(), autocast(device, dtype):
        for chunk in chunks:
            pixels = to_batch(torch.from_numpy(chunk))
            for start in range(0, len(pixels), batch_size):
                images = pixels[start:start + batch_size].to(device, non_blocking=True)
                features = F.normalize(model.encode_image(images).float(), dim=-1).cpu().numpy()
                if out is None:
                    out = np.empty((len(paths) * settings.n_views, features.shape[1]),
                                   dtype=np.float32)
                out[done:done + len(features)] = features
                done += len(features)
                bar.update(len(features))
    bar.close()
    return out.reshape(len(paths), settings.n_views, -1)


def views_table(manifest: pd.DataFrame, views: np.ndarray) -> pd.DataFrame:
    """One row per (image, view): the manifest's key columns, ``image`` (the row's
    position in the manifest, which tells duplicate rows of one file apart), ``view``
    and ``embedding``, image-major.

    Long rather than one list of lists per image: ``embedding`` is a flat list<float>
    like every other embeddings table (``core.embed.embeddings_matrix`` reads it, and a
    trainer on views sees one sample per row with its label beside it), and parquet's
    dictionary encoding stores the repeated path and class names for next to nothing.
    """
    if views.ndim != 3 or len(views) != len(manifest):
        raise ViewsError(f"views must be (rows, n_views, dim) with {len(manifest)} rows, "
                         f"got shape {views.shape}.")
    n, n_views, _ = views.shape
    keys = manifest[["path", "label", "class_name"]].reset_index(drop=True)
    table = keys.loc[np.repeat(np.arange(n), n_views)].reset_index(drop=True)
    table.insert(0, "image", np.repeat(np.arange(n, dtype=np.int64), n_views))
    table["view"] = np.tile(np.arange(n_views, dtype=np.int64), n)
    table["embedding"] = list(views.reshape(n * n_views, -1).astype(np.float32))
    return table


def views_array(table: pd.DataFrame) -> np.ndarray:
    """``views_table``'s (rows, n_views, dim) float32 array back, in image then view
    order whatever the table's row order; every image must have every view once."""
    ordered = table.sort_values(["image", "view"], kind="stable")
    images = ordered["image"].to_numpy()
    n = int(images.max()) + 1 if len(images) else 0
    n_views = len(ordered) // n if n else 0
    expected_images = np.repeat(np.arange(n), n_views)
    expected_views = np.tile(np.arange(n_views), n)
    if n == 0 or len(ordered) != n * n_views or not np.array_equal(images, expected_images) \
            or not np.array_equal(ordered["view"].to_numpy(), expected_views):
        raise ViewsError("views table is incomplete: every image 0..n-1 needs views "
                         "0..n_views-1 exactly once.")
    matrix = np.stack(ordered["embedding"].to_numpy()).astype(np.float32, copy=False)
    return matrix.reshape(n, n_views, -1)
