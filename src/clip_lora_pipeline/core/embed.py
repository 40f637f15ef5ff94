"""Batched image encoding: a DataLoader with worker processes and pinned memory on GPU,
decoding threads on CPU, mixed precision where asked, memory bounded by the batch size."""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from open_clip.transform import (
    CenterCropOrPad,
    MaybeConvertMode,
    MaybeToTensor,
    ResizeKeepRatio,
)
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from tqdm.auto import tqdm

from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.images import load_rgb
from clip_lora_pipeline.core.methods.base import linear_logits, zero_shot_head
from clip_lora_pipeline.core.runtime import (
    autocast,
    resolve_num_workers,
    tune_cpu_allocator,
    usable_cpus,
)


class ManifestImages(Dataset):
    """The images of a manifest, decoded to RGB and preprocessed, with their label
    (-1 for a table of unlabelled images, which has no ``label`` column)."""

    def __init__(self, manifest: pd.DataFrame, root: str | Path, transform: Callable):
        self.paths = [storage.join(root, p) for p in manifest["path"]]
        if "label" in manifest:
            self.labels = manifest["label"].to_numpy(dtype=np.int64)
        else:
            self.labels = np.full(len(manifest), -1, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return self.transform(load_rgb(self.paths[index])), self.labels[index]


_PIL_STEPS = (T.Resize, T.CenterCrop, ResizeKeepRatio, CenterCropOrPad)


class BatchToTensorNormalize:
    """torchvision's ``ToTensor`` then ``Normalize``, for a batch of H x W x 3 uint8
    images: the same operations in the same order, so the result is bit-identical."""

    def __init__(self, normalize: T.Normalize):
        self.mean, self.std = normalize.mean, normalize.std

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        batch = images.permute(0, 3, 1, 2).contiguous().to(torch.get_default_dtype()).div(255)
        mean = torch.as_tensor(self.mean, dtype=batch.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=batch.dtype).view(-1, 1, 1)
        return batch.sub_(mean).div_(std)


def split_batch_tail(transform: Callable) -> tuple[Callable, BatchToTensorNormalize] | None:
    """open_clip's evaluation preprocessing as per-image PIL steps (resize, crop, RGB)
    and one batch step (to-tensor and normalise).

    Per image, the last two steps took about 0.6 ms of a 224-pixel photo's 2.5 ms of
    decoding here; once per batch they run vectorised on every core (decoding 2.32 ->
    2.04 ms per photo on 2 cores, benchmarks/README.md). Returns None for any other
    transform (augmentations, custom callables): it then runs per image, unchanged.
    """
    if not isinstance(transform, T.Compose) or len(transform.transforms) < 2:
        return None
    *head, to_tensor, normalize = transform.transforms
    if type(to_tensor) not in (T.ToTensor, MaybeToTensor) or type(normalize) is not T.Normalize \
            or any(float(s) == 0 for s in normalize.std):
        return None
    for step in head:
        rgb = isinstance(step, MaybeConvertMode) and step.mode == "RGB"
        if not (rgb or type(step) in _PIL_STEPS):
            return None
    return T.Compose(head), BatchToTensorNormalize(normalize)


class ThreadedBatches:
    """Batches decoded by a pool of threads in this process, in order.

    On a CPU the model needs every core while it runs, so worker processes only take
    cores from it; but with no workers at all a batch is decoded on one core while the
    others wait. Here the two take turns: each batch is decoded and preprocessed on all
    cores (PIL and torch release the GIL), then encoded. Where the preprocessing is
    open_clip's, its to-tensor and normalise steps run once per batch
    (``split_batch_tail``). Memory: one batch.
    """

    def __init__(self, dataset: ManifestImages, batch_size: int, threads: int):
        self.dataset, self.batch_size, self.threads = dataset, batch_size, threads
        self.split = split_batch_tail(dataset.transform)

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def _image(self, index: int) -> torch.Tensor | np.ndarray:
        if self.split is None:
            return self.dataset[index][0]
        # load_rgb gives RGB and the PIL steps keep it: an H x W x 3 uint8 array.
        return np.asarray(self.split[0](load_rgb(self.dataset.paths[index])))

    def __iter__(self):
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            for start in range(0, len(self.dataset), self.batch_size):
                stop = min(start + self.batch_size, len(self.dataset))
                images = list(pool.map(self._image, range(start, stop)))
                if self.split is None:
                    batch = torch.stack(images)
                else:
                    batch = self.split[1](torch.from_numpy(np.stack(images)))
                yield batch, torch.tensor(self.dataset.labels[start:stop])


def image_loader(
    manifest: pd.DataFrame,
    root: str | Path,
    transform: Callable,
    device: torch.device,
    batch_size: int = 64,
    num_workers: int = 0,
) -> DataLoader | ThreadedBatches:
    """Batches in manifest order; pinned memory only when a GPU will take them. On a
    CPU without worker processes, batches are decoded by threads (``ThreadedBatches``)."""
    dataset = ManifestImages(manifest, root, transform)
    if device.type == "cpu" and num_workers == 0:
        return ThreadedBatches(dataset, batch_size, usable_cpus())
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        # Its own generator: the worker seeds it draws would otherwise come from the
        # global RNG, which training's dropout draws from between evaluations.
        generator=torch.Generator(),
    )


def encode_images(
    model: torch.nn.Module,
    manifest: pd.DataFrame,
    root: str | Path,
    transform: Callable,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 64,
    num_workers: int | str = "auto",
    desc: str = "Encoding images",
) -> np.ndarray:
    """L2-normalised float32 image embeddings, one row per manifest row, in order."""
    if device.type == "cpu":
        tune_cpu_allocator()
    workers = resolve_num_workers(num_workers, device)
    loader = image_loader(manifest, root, transform, device, batch_size, workers)
    out: np.ndarray | None = None
    start = 0
    model.eval()
    with torch.inference_mode(), autocast(device, dtype):
        for batch, _ in tqdm(loader, desc=desc, unit="batch", mininterval=1.0):
            images = batch.to(device, non_blocking=True)
            features = F.normalize(model.encode_image(images).float(), dim=-1).cpu().numpy()
            if out is None:
                out = np.empty((len(manifest), features.shape[1]), dtype=np.float32)
            out[start:start + len(features)] = features
            start += len(features)
    if out is None:
        raise ValueError("cannot encode an empty manifest")
    return out


def embeddings_table(manifest: pd.DataFrame, embeddings: np.ndarray) -> pd.DataFrame:
    """The manifest's key columns beside one embedding per row (a list column)."""
    table = manifest[["path", "label", "class_name"]].reset_index(drop=True).copy()
    table["embedding"] = list(embeddings.astype(np.float32))
    return table


def embeddings_matrix(table: pd.DataFrame) -> np.ndarray:
    return np.stack(table["embedding"].to_numpy()).astype(np.float32, copy=False)


def classifier_logits(image_embeddings: np.ndarray, classifier: pd.DataFrame) -> np.ndarray:
    """Zero-shot logits: logit scale x cosine of normalised image embeddings (rows) with
    a text classifier table (one normalised ``embedding`` per class in label order, and
    the model's ``logit_scale``)."""
    head = zero_shot_head(embeddings_matrix(classifier), float(classifier["logit_scale"].iloc[0]))
    return linear_logits(head, image_embeddings)
