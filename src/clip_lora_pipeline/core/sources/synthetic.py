"""A generated dataset of shapes, colours and textures, for offline runs and tests.

The classes differ in ways a vision model can really learn (shape, colour, texture),
while each image varies in position, size, rotation, colour and background, so the
task is not solved by one pixel.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from upath import UPath

from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.sources.base import Source, SourceError
from clip_lora_pipeline.core.sources.image_folder import ImageFolder

_SPEC_FILE = ".synthetic.json"

Painter = Callable[[ImageDraw.ImageDraw, np.random.Generator, int], None]


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int = 40) -> tuple:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _placement(rng: np.random.Generator, size: int) -> tuple[float, float, float]:
    radius = size * rng.uniform(0.2, 0.35)
    cx, cy = rng.uniform(radius, size - radius, 2)
    return cx, cy, radius


def _polygon(cx: float, cy: float, radius: float, corners: int, angle: float,
             inner: float | None = None) -> list[tuple[float, float]]:
    points = []
    steps = corners * (2 if inner else 1)
    for k in range(steps):
        r = radius if inner is None or k % 2 == 0 else radius * inner
        theta = angle + 2 * math.pi * k / steps
        points.append((cx + r * math.cos(theta), cy + r * math.sin(theta)))
    return points


def _circle(colour: tuple[int, int, int]) -> Painter:
    def paint(draw, rng, size):
        cx, cy, r = _placement(rng, size)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_jitter(rng, colour))
    return paint


def _regular(colour: tuple[int, int, int], corners: int, inner: float | None = None) -> Painter:
    def paint(draw, rng, size):
        cx, cy, r = _placement(rng, size)
        points = _polygon(cx, cy, r, corners, rng.uniform(0, 2 * math.pi), inner)
        draw.polygon(points, fill=_jitter(rng, colour))
    return paint


def _ring(colour: tuple[int, int, int]) -> Painter:
    def paint(draw, rng, size):
        cx, cy, r = _placement(rng, size)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=_jitter(rng, colour),
                     width=max(2, int(r * 0.35)))
    return paint


def _stripes(draw, rng, size):
    period = int(rng.integers(max(4, size // 10), max(6, size // 5)))
    dark = _jitter(rng, (20, 20, 20), 20)
    vertical = rng.random() < 0.5
    for start in range(0, size, period):
        box = ([start, 0, start + period // 2, size] if vertical
               else [0, start, size, start + period // 2])
        draw.rectangle(box, fill=dark)


def _checkerboard(draw, rng, size):
    cell = int(rng.integers(max(3, size // 10), max(5, size // 5)))
    a, b = _jitter(rng, (200, 60, 160), 30), _jitter(rng, (250, 230, 120), 30)
    for y in range(0, size, cell):
        for x in range(0, size, cell):
            draw.rectangle([x, y, x + cell, y + cell], fill=a if (x // cell + y // cell) % 2 else b)


def _dots(draw, rng, size):
    colour = _jitter(rng, (30, 160, 200), 30)
    for _ in range(int(rng.integers(12, 25))):
        cx, cy = rng.uniform(0, size, 2)
        r = size * rng.uniform(0.03, 0.06)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)


CLASSES: dict[str, Painter] = {
    "red circle": _circle((220, 30, 30)),
    "green triangle": _regular((30, 180, 40), 3),
    "blue square": _regular((30, 60, 220), 4),
    "yellow star": _regular((240, 210, 20), 5, inner=0.45),
    "striped pattern": _stripes,
    "checkerboard pattern": _checkerboard,
    "purple ring": _ring((150, 40, 190)),
    "dotted pattern": _dots,
}


def render(class_name: str, index: int, size: int, seed: int) -> Image.Image:
    """One deterministic image of ``class_name``."""
    label = list(CLASSES).index(class_name)
    rng = np.random.default_rng([seed, label, index])
    corner_a, corner_b = rng.integers(90, 200, 3), rng.integers(90, 200, 3)
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    background = corner_a * (1 - t) + corner_b * t + rng.normal(0, 12, (size, size, 3))
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "RGB")
    CLASSES[class_name](ImageDraw.Draw(image), rng, size)
    return image


def folder_name(class_name: str) -> str:
    return class_name.replace(" ", "_")


def _generate(folder: Path, spec: dict) -> None:
    """The images of ``spec`` (``Synthetic._spec``) and its settings file, in ``folder``."""
    for class_name in list(CLASSES)[:spec["num_classes"]]:
        class_folder = folder / folder_name(class_name)
        class_folder.mkdir()
        for i in range(spec["images_per_class"]):
            image = render(class_name, i, spec["image_size"], spec["seed"])
            image.save(class_folder / f"{folder_name(class_name)}_{i:04d}.png")
    (folder / _SPEC_FILE).write_text(json.dumps(spec, indent=1))


class Synthetic(Source):
    name = "synthetic"
    any_filesystem = True
    layout = "  <class_name>/<class_name>_<nnnn>.png, plus .synthetic.json (the generator settings)"

    @staticmethod
    def _spec(num_classes: int, images_per_class: int, image_size: int, seed: int) -> dict:
        if not 2 <= num_classes <= len(CLASSES):
            raise SourceError(f"synthetic: num_classes must be 2..{len(CLASSES)}, got {num_classes}.")
        if images_per_class < 1 or image_size < 16:
            raise SourceError("synthetic: images_per_class must be >= 1 and image_size >= 16.")
        return {"num_classes": num_classes, "images_per_class": images_per_class,
                "image_size": image_size, "seed": seed}

    def is_prepared(self, root: Path | UPath, num_classes: int = 6, images_per_class: int = 40,
                    image_size: int = 64, seed: int = 0) -> bool:
        spec_file = root / _SPEC_FILE
        spec = self._spec(num_classes, images_per_class, image_size, seed)
        return spec_file.exists() and json.loads(spec_file.read_text()) == spec

    def prepare(self, root: Path | UPath, timeout: float = 30.0, num_classes: int = 6,
                images_per_class: int = 40, image_size: int = 64, seed: int = 0) -> None:
        """Generate the images, replacing the folder atomically when the settings change.
        On an object store, where folders do not rename, the images are put one by one
        and the settings file, which ``is_prepared`` reads, last."""
        if self.is_prepared(root, num_classes, images_per_class, image_size, seed):
            return
        spec = self._spec(num_classes, images_per_class, image_size, seed)
        if storage.is_remote(root):
            with tempfile.TemporaryDirectory(prefix="clip-lora-") as staging:
                _generate(Path(staging), spec)
                storage.remove_tree(root)
                for file in sorted(Path(staging).rglob("*.png")):
                    storage.upload(file, root / file.relative_to(staging).as_posix())
                storage.upload(Path(staging) / _SPEC_FILE, root / _SPEC_FILE)
            return
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
        staging.chmod(0o755)  # mkdtemp makes it owner-only
        try:
            _generate(staging, spec)
            if root.exists():
                shutil.rmtree(root)
            os.replace(staging, root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def index(self, root: Path | UPath, num_classes: int = 6, images_per_class: int = 40,
              image_size: int = 64, seed: int = 0) -> pd.DataFrame:
        if not self.is_prepared(root, num_classes, images_per_class, image_size, seed):
            raise SourceError(
                f"synthetic: {root} does not hold images for these settings; run the "
                "download node (it generates them)."
            )
        names = {folder_name(c): c for c in list(CLASSES)[:num_classes]}
        return ImageFolder().index(root, class_names=names)
