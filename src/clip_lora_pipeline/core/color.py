"""Any PIL image as 8-bit RGB (``to_rgb``): transparency onto white, high bit depths
scaled rather than clipped."""

from __future__ import annotations

import numpy as np
from PIL import Image


def _depth_range(mode: str, pixels: np.ndarray) -> tuple[float, float]:
    """The values that become black and white in 8 bits.

    16-bit modes use the type's range (0..65535), so a dark photo stays dark. Mode I
    (32-bit int: 16-bit PGM, signed TIFF) and F (float TIFF) declare no range: values
    within 0..255 (I) or 0..1 (F) keep that range, larger ones the 16-bit range if they
    fit it, else the image's own maximum; negative values stretch min..max.
    """
    if mode.startswith("I;16"):
        return 0.0, 65535.0
    finite = pixels[np.isfinite(pixels)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if low < 0:
        return low, max(high, low + 1.0)
    for top in (1.0,) if mode == "F" else (255.0, 65535.0):
        if high <= top:
            return 0.0, top
    return 0.0, high


def _to_8bit(image: Image.Image) -> Image.Image:
    """Scale a high-bit-depth single-channel image to 8-bit greyscale (mode L).

    PIL's own convert() clips these modes at 255 instead of scaling, which turns a
    full-range 16-bit image almost white.
    """
    pixels = np.asarray(image, dtype=np.float32)
    low, high = _depth_range(image.mode, pixels)
    scaled = np.rint((pixels - low) * (255.0 / (high - low)))
    return Image.fromarray(np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited onto white.

    Dropping alpha instead would turn transparent pixels into whatever colour they
    happen to store, often black. 16-bit, 32-bit and float greyscale are scaled to
    8 bits (see ``_depth_range``); PIL itself already reduces 16-bit RGB(A) and
    grey+alpha PNGs and TIFFs to 8 bits per channel when it opens them.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _to_8bit(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")
