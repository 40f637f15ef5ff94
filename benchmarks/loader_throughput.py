"""Training-loader throughput per core: torchvision's per-image recipe against crops of
images decoded once (core.pixel_cache + core.augment).

    .venv/bin/python benchmarks/loader_throughput.py [FOLDER] [--repeats 5] [--batch 32]
    .venv/bin/python benchmarks/loader_throughput.py [FOLDER] --device cuda

FOLDER (default ../shared/datasets/caltech101-mini) holds the JPEGs, in class folders.
One process, torch pinned to one thread, so the rates are per core:

- old: per image, PIL decode (core.images.load_rgb), then torchvision's
  RandomResizedCrop(224, scale=(0.08, 1), bicubic), RandomHorizontalFlip, ToTensor and
  Normalize (OpenAI CLIP's mean and std); batches stacked as a loader collates them;
- new: the images decoded once into a PixelCache (its cost reported apart), then
  batches through Augmentation.batch with draws from Augmentation.draw, on the CPU.

Each timed pass covers every image once; the paths alternate, after one warm-up pass
each, and the median pass counts. Both paths' time is also split into their steps (the
old path's within its timed pass; the new path's in a separate pass that runs
``Augmentation.batch``'s parts one by one). As training on a CPU does, the script calls
``tune_cpu_allocator()`` first (``--plain-allocator`` skips it). Target: new >= 10x old
per core. With ``--device cuda`` the new path is also timed as training on a GPU runs
it: the cache on the GPU, crops, resizes, flips and normalisation there, the host doing
the draws (reported as ``device_img_per_s``, not per core).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

from clip_lora_pipeline.core.augment import Augmentation
from clip_lora_pipeline.core.images import load_rgb
from clip_lora_pipeline.core.pixel_cache import PixelCache, decode_for_training
from clip_lora_pipeline.core.runtime import tune_cpu_allocator

SIZE, SCALE = 224, (0.08, 1.0)
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT = Path(__file__).resolve().parents[2] / "shared/datasets/caltech101-mini"


def old_pass(paths: list[Path], batch: int) -> tuple[float, dict[str, float]]:
    """Seconds for one pass of the per-image recipe, and each step's share of them."""
    steps = {"decode": load_rgb,
             "crop + resize": T.RandomResizedCrop(
                 SIZE, scale=SCALE, interpolation=T.InterpolationMode.BICUBIC),
             "flip": T.RandomHorizontalFlip(),
             "to-tensor + normalise": T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])}
    parts = dict.fromkeys(steps, 0.0)
    start = time.perf_counter()
    for first in range(0, len(paths), batch):
        out = []
        for path in paths[first:first + batch]:
            image = path
            for key, step in steps.items():
                t = time.perf_counter()
                image = step(image)
                parts[key] += time.perf_counter() - t
            out.append(image)
        torch.stack(out)
    return time.perf_counter() - start, parts


def new_pass(cache: PixelCache, aug: Augmentation, batch: int, seed: int,
             split: bool = False) -> tuple[float, dict[str, float]]:
    """Seconds for one pass of Augmentation.batch over the cache; with ``split``, the
    pass is done in its three parts, each timed."""
    order = np.random.default_rng(seed).permutation(len(cache))
    parts = {"draw": 0.0, "crop + resize + flip": 0.0, "normalise": 0.0}
    start = time.perf_counter()
    for step, first in enumerate(range(0, len(order), batch)):
        index = order[first:first + batch]
        t0 = time.perf_counter()
        draws = [aug.draw(seed, step, slot, int(cache.heights[i]), int(cache.widths[i]))
                 for slot, i in enumerate(index)]
        images = [cache[i] for i in index]
        if not split:
            aug.batch(images, draws)
            continue
        t1 = time.perf_counter()
        crops = torch.stack([aug.crop(i, d) for i, d in zip(images, draws)])
        t2 = time.perf_counter()
        aug.finish(crops)
        t3 = time.perf_counter()
        for key, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
            parts[key] += seconds
    return time.perf_counter() - start, parts


def device_rate(paths: list[Path], aug: Augmentation, batch: int, repeats: int,
                device: torch.device) -> tuple[float, float]:
    """Images per second of the new path with the cache on ``device`` (the median of
    ``repeats`` passes after a warm-up, each ending in a synchronisation), and the
    seconds the cache took to build there."""
    t = time.perf_counter()
    cache = PixelCache.decode([str(p) for p in paths], SIZE, device)
    build_s = time.perf_counter() - t
    rates = []
    for seed in range(repeats + 1):
        start = time.perf_counter()
        new_pass(cache, aug, batch, seed)
        if device.type == "cuda":  # the crops are queued: wait for them
            torch.cuda.synchronize(device)
        rates.append(len(paths) / (time.perf_counter() - start))
    return statistics.median(rates[1:]), build_s


def _upscaled(paths: list[Path], factor: float, folder: Path) -> list[Path]:
    out = []
    for index, path in enumerate(paths):
        image = load_rgb(path)
        size = (round(image.width * factor), round(image.height * factor))
        out.append(folder / f"{index:04d}.jpg")
        image.resize(size, Image.Resampling.BICUBIC).save(out[-1], quality=90)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--plain-allocator", action="store_true",
                        help="skip tune_cpu_allocator(), which training on a CPU calls")
    parser.add_argument("--upscale", type=float, default=None,
                        help="first write the photos enlarged by this factor (JPEG q90) to "
                             "a temporary folder: caltech101-mini's are ~300 x 200, the "
                             "benchmark datasets' photos ~500 x 500 and more")
    parser.add_argument("--device", default="cpu",
                        help="also time the new path with its cache on this device (cuda)")
    args = parser.parse_args()
    paths = sorted(p for p in args.folder.rglob("*")
                   if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if args.upscale and paths:
        paths = _upscaled(paths, args.upscale, Path(tempfile.mkdtemp(prefix="loader_")))
    if not paths:
        sys.exit(f"No images under {args.folder}: pass the folder of caltech101-mini "
                 f"(300 JPEGs in class folders), e.g. ../shared/datasets/caltech101-mini")
    torch.set_num_threads(1)
    tuned = not args.plain_allocator and tune_cpu_allocator()
    n = len(paths)
    aug = Augmentation(SIZE, SCALE, MEAN, STD)

    t = time.perf_counter()  # one-off: decoding on this one core
    cache = PixelCache([decode_for_training(str(p), SIZE) for p in paths])
    decode_s = time.perf_counter() - t
    t = time.perf_counter()  # as training builds it: on threads, every usable core
    PixelCache.decode([str(p) for p in paths], SIZE, torch.device("cpu"))
    threaded_s = time.perf_counter() - t
    cache_bytes = sum(i.numel() * i.element_size() for i in cache.images)
    cache_mb = cache_bytes / 2**20

    torch.manual_seed(0)
    old_pass(paths, args.batch), new_pass(cache, aug, args.batch, seed=0)  # warm-up
    old, new, old_split, split = [], [], [], []
    for r in range(args.repeats):
        seconds, parts = old_pass(paths, args.batch)
        old.append(n / seconds)
        old_split.append(parts)
        new.append(n / new_pass(cache, aug, args.batch, seed=r + 1)[0])
        split.append(new_pass(cache, aug, args.batch, seed=r + 1, split=True)[1])
    old_rate, new_rate = statistics.median(old), statistics.median(new)
    parts = {k: 1e3 * statistics.median(s[k] for s in split) / n for k in split[0]}
    old_parts = {k: 1e3 * statistics.median(s[k] for s in old_split) / n
                 for k in old_split[0]}

    on_device = {}
    if args.device != "cpu":
        rate, build_s = device_rate(paths, aug, args.batch, args.repeats,
                                    torch.device(args.device))
        on_device = {"device": args.device, "device_img_per_s": rate,
                     "device_cache_build_s": build_s}
        print(f"new on {args.device}: {rate:.1f} img/s (cache built in {build_s:.2f} s)")

    enlarged = f" enlarged {args.upscale}x" if args.upscale else ""
    print(f"### {n} images from {args.folder.name}{enlarged}, batch {args.batch}, torch "
          f"{torch.__version__}, 1 thread, {args.repeats} alternating passes each, "
          f"allocator {'tuned' if tuned else 'plain'}")
    print(f"old img/s: {old_rate:.1f} (every pass: {', '.join(f'{x:.1f}' for x in old)})")
    print(f"new img/s: {new_rate:.1f} (every pass: {', '.join(f'{x:.1f}' for x in new)})")
    print(f"new / old: {new_rate / old_rate:.2f}x (target >= 10x)")
    print("old, ms per image: " + ", ".join(f"{k} {v:.3f}" for k, v in old_parts.items()))
    print("new, ms per image: " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()))
    print(f"one-off decode: {1e3 * decode_s / n:.2f} ms per image on one core "
          f"({decode_s:.2f} s), {threaded_s:.2f} s on threads (PixelCache.decode); "
          f"cache {cache_mb:.1f} MB")
    print(json.dumps({"old_img_per_s": old_rate, "new_img_per_s": new_rate,
                      "ratio": new_rate / old_rate, "decode_s": decode_s,
                      "cache_bytes": cache_bytes, "allocator_tuned": tuned,
                      "old_ms_per_image": old_parts, "new_ms_per_image": parts,
                      **on_device}))


if __name__ == "__main__":
    main()
