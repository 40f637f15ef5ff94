"""Decoding images, converting every mode to RGB, and validating a manifest's files."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

ON_BAD_IMAGE = ("skip", "fail")


class BadImagesError(ValueError):
    """Validation found unreadable images and ``on_bad_image`` is 'fail'."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited onto white.

    Dropping alpha instead would turn transparent pixels into whatever colour they
    happen to store, often black.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode ``path`` as an RGB image."""
    with Image.open(path) as image:
        image.load()
        return to_rgb(image)


@dataclass(frozen=True)
class ImageCheck:
    width: int | None
    height: int | None
    mode: str | None
    reason: str | None


def check_image(path: Path) -> ImageCheck:
    """Decode ``path`` once; on failure say why, in words a user can act on."""
    try:
        if path.stat().st_size == 0:
            return ImageCheck(None, None, None, "empty file (0 bytes)")
        with Image.open(path) as image:
            mode = image.mode
            image.load()
            width, height = to_rgb(image).size
    except FileNotFoundError:
        return ImageCheck(None, None, None, "file not found")
    except UnidentifiedImageError:
        return ImageCheck(None, None, None, "not an image file (unrecognised format)")
    except Image.DecompressionBombError as exc:
        return ImageCheck(None, None, None, f"too large to decode safely: {exc}")
    except (OSError, SyntaxError, ValueError) as exc:
        text = str(exc)
        reason = "truncated or corrupt image" + (f": {text}" if text else "")
        return ImageCheck(None, None, None, reason)
    if width == 0 or height == 0:
        return ImageCheck(None, None, None, "image has zero width or height")
    return ImageCheck(width, height, mode, None)


def check_images(paths: list[Path], num_workers: int | None = None) -> list[ImageCheck]:
    """``check_image`` for every path, in order, in parallel threads."""
    workers = num_workers or min(8, (os.cpu_count() or 1) * 2)
    # PIL releases the GIL while decoding, so threads use every core without pickling.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(
            tqdm(pool.map(check_image, paths), total=len(paths), desc="Validating images",
                 unit="img", mininterval=1.0)
        )


def validate_images(
    manifest: pd.DataFrame,
    root: Path,
    on_bad_image: str = "skip",
    num_workers: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode every image of ``manifest`` once, in parallel threads.

    Returns the manifest of good images (with width, height and original mode) and
    a table of rejected files with their reason. With ``on_bad_image='fail'`` any
    rejection raises, listing the first few files.
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(
            f"validation.on_bad_image must be one of {ON_BAD_IMAGE}, got {on_bad_image!r}."
        )
    checks = check_images([root / p for p in manifest["path"]], num_workers)
    reasons = pd.Series([c.reason for c in checks], index=manifest.index, dtype="string")
    bad = reasons.notna()
    rejected = manifest.loc[bad, ["path", "class_name"]].assign(reason=reasons[bad])
    rejected = rejected.reset_index(drop=True)
    if bad.any() and on_bad_image == "fail":
        listing = "\n".join(
            f"  {root / row.path}: {row.reason}" for row in rejected.head(10).itertuples()
        )
        raise BadImagesError(
            f"{int(bad.sum())} of {len(manifest)} images under {root} cannot be used:\n"
            f"{listing}\nFix or remove them, or set validation.on_bad_image: skip to "
            "exclude them and list them in the rejected-images table."
        )
    lost = sorted(set(manifest["class_name"]) - set(manifest.loc[~bad, "class_name"]))
    if lost:
        raise BadImagesError(
            f"classes {lost[:10]} under {root} have no readable image left; see the "
            "rejected-images table for why. Fix their files or remove those classes."
        )
    good = manifest.loc[~bad].copy()
    good["width"] = pd.array([c.width for c, b in zip(checks, bad) if not b], dtype="int64")
    good["height"] = pd.array([c.height for c, b in zip(checks, bad) if not b], dtype="int64")
    good["mode"] = pd.array([c.mode for c, b in zip(checks, bad) if not b], dtype="string")
    return good.reset_index(drop=True), rejected
