"""Sample predictions as an HTML grid of small JPEG thumbnails with text captions.

Captions are HTML text, so they stay readable at any zoom (drawn into a figure they
shrink with it), and the photos are JPEG thumbnails sized for the page: 16 per
method at about 10 kB each keeps a report for a 102-class dataset and ~8 methods at a
few MB. Styles are inline so the fragment also stands alone (the catalog saves it)."""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path

import pandas as pd
from upath import UPath

from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.images import load_rgb
from clip_lora_pipeline.core.report.figures import CORRECT_COLOUR, WRONG_COLOUR

THUMBNAIL_PX = 200  # longest side; the page shows them at this size
JPEG_QUALITY = 80   # photos: no visible loss at this size, about 10 kB each

GRID_STYLE = ("display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));"
              "gap:.6rem;margin:.4rem 0")
CELL_STYLE = "margin:0;padding:4px;border:4px solid {colour};border-radius:4px;background:#fff"
IMAGE_STYLE = ("display:block;width:100%;height:160px;object-fit:contain;border:0;margin:0;"
               "background:#f6f8fa")
CAPTION_STYLE = "font-size:12px;line-height:1.35;color:{colour};overflow-wrap:anywhere"


def jpeg_thumbnail(path: str | Path, size: int = THUMBNAIL_PX, quality: int = JPEG_QUALITY
                   ) -> bytes:
    """The image at ``path`` as RGB JPEG bytes, its longest side at most ``size``."""
    image = load_rgb(path)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def _thumbnail_cell(row: pd.Series, image_root: Path | UPath, size: int) -> str:
    correct = bool(row["correct"])
    colour = CORRECT_COLOUR if correct else WRONG_COLOUR
    true_class, predicted = escape(str(row["true_class"])), escape(str(row["predicted_class"]))
    try:
        data = base64.b64encode(jpeg_thumbnail(image_root / row["path"], size)).decode("ascii")
        picture = (f'<img src="data:image/jpeg;base64,{data}" style="{IMAGE_STYLE}" '
                   f'alt="test image of {true_class}">')
    except OSError as error:  # a file moved since the run: say why, keep the grid
        picture = (f'<div style="{IMAGE_STYLE};font-size:12px;padding:4px;box-sizing:border-box">'
                   f"cannot open {escape(Path(row['path']).name)}: {escape(str(error))}</div>")
    mark = "✓ correct" if correct else "✗ wrong"  # not by colour alone
    caption = (f"<b>{mark}</b><br>true: {true_class}<br>pred: {predicted} "
               f"({row['confidence']:.2f})")
    return (f'<figure class="sample {"correct" if correct else "wrong"}" '
            f'style="{CELL_STYLE.format(colour=colour)}">{picture}'
            f'<figcaption style="{CAPTION_STYLE.format(colour=colour)}">{caption}</figcaption>'
            "</figure>")


def prediction_grid_html(samples: pd.DataFrame, image_root: str | Path, title: str,
                         size: int = THUMBNAIL_PX) -> str:
    """An HTML fragment: one captioned JPEG thumbnail per row of ``samples`` (columns
    path, true_class, predicted_class, confidence, correct), errors framed in red."""
    cells = "".join(_thumbnail_cell(row, storage.data_path(image_root), size) for _, row in samples.iterrows())
    return (f'<figure class="prediction-grid" style="margin:0">'
            f'<div style="{GRID_STYLE}">{cells}</div>'
            f"<figcaption>{escape(title)}</figcaption></figure>")
