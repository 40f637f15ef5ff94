"""Catalog dataset types that write atomically.

kedro-datasets writes straight to the final path, so a run killed mid-write leaves a
file that exists but is cut short, and ``--only-missing-outputs`` would then skip it.
These types write to a hidden sibling and rename it into place when it is complete
(``core.atomic.atomic_path``, which the training checkpoints share). Elsewhere (an
fsspec URL: ``s3://``, ``gs://``, ``abfs://``), a file open for writing uploads what was
written when it closes, an error included, so these types write a local temporary file
and put it whole (``core.storage.put_whole``) with the dataset's own filesystem (its
``credentials`` and ``fs_args``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
import numpy as np
from kedro.io.core import AbstractDataset, get_filepath_str
from kedro_datasets._typing import TablePreview
from kedro_datasets.json import JSONDataset as _JSONDataset
from kedro_datasets.matplotlib import MatplotlibDataset as _MatplotlibDataset
from kedro_datasets.pandas import CSVDataset as _CSVDataset
from kedro_datasets.pandas import ParquetDataset as _ParquetDataset
from kedro_datasets.text import TextDataset as _TextDataset

from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.atomic import atomic_path


class AtomicSaveMixin:
    """Stage a local save under a hidden temporary name, then rename it into place; a
    remote one in a local temporary file, then put it whole.

    ``remake: true`` (for cheap summaries: reports, comparison tables, sweep aggregates)
    makes the dataset count as missing, so ``--only-missing-outputs`` remakes it from
    its inputs on every run that includes its node, instead of keeping a stale one.
    """

    _staging: PurePosixPath | None = None

    def __init__(self, *args: Any, remake: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._remake = remake

    def _exists(self) -> bool:
        return not self._remake and super()._exists()

    def stored(self) -> bool:
        """Whether the file is there, ``remake`` or not."""
        return super()._exists()

    def _get_save_path(self) -> PurePosixPath:
        return self._staging or super()._get_save_path()

    def save(self, data: Any) -> None:
        final = get_filepath_str(super()._get_save_path(), self._protocol)
        if self._protocol == "file":
            with atomic_path(Path(final)) as staging:
                self._save_to(staging, data)
            return
        remote = self._fs
        with tempfile.TemporaryDirectory(prefix="clip-lora-") as folder:
            staging = Path(folder) / PurePosixPath(final).name
            self._fs = fsspec.filesystem("file")  # for this save only
            try:
                self._save_to(staging, data)
            finally:
                self._fs = remote
            storage.put_whole(remote, staging, final)

    def _save_to(self, staging: Path, data: Any) -> None:
        # kedro-datasets writes wherever _get_save_path points, for this save only
        self._staging = PurePosixPath(staging.as_posix())
        try:
            super().save(data)
        finally:
            self._staging = None


class ParquetDataset(AtomicSaveMixin, _ParquetDataset):
    """``pandas.ParquetDataset`` with atomic local writes, and a kedro-viz preview that
    also works for tables with vector columns (embeddings, top-5 lists)."""

    def preview(self, nrows: int = 5) -> TablePreview:
        preview = super().preview(nrows)
        preview["data"] = [[_preview_cell(v) for v in row] for row in preview["data"]]
        return preview


def _preview_cell(value: Any) -> Any:
    # kedro-viz serialises previews as JSON: arrays become short readable strings.
    if isinstance(value, (np.ndarray, list, tuple)):
        items = list(value)
        shown = ", ".join(f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)
                          for v in items[:5])
        return f"[{shown}{', …' if len(items) > 5 else ''}] ({len(items)})"
    if isinstance(value, np.generic):
        return value.item()
    return value


class JSONDataset(AtomicSaveMixin, _JSONDataset):
    """``json.JSONDataset`` with atomic local writes."""


class CSVDataset(AtomicSaveMixin, _CSVDataset):
    """``pandas.CSVDataset`` with atomic local writes."""


class TextDataset(AtomicSaveMixin, _TextDataset):
    """``text.TextDataset`` (markdown, HTML) with atomic local writes."""


class FigureDataset(AtomicSaveMixin, _MatplotlibDataset):
    """A matplotlib figure saved as PNG, atomically. Unlike ``MatplotlibDataset`` it
    loads: as the PNG's bytes, which is what the HTML report embeds. kedro-viz previews
    it like any matplotlib dataset."""

    def __init__(self, filepath: str, save_args: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(filepath=filepath, save_args={"format": "png", **(save_args or {})},
                         **kwargs)

    def load(self) -> bytes:  # type: ignore[override]
        with self._fs.open(get_filepath_str(self._get_load_path(), self._protocol), "rb") as f:
            return f.read()


class SafetensorsDataset(AbstractDataset):
    """Tensors plus a JSON config in one ``.safetensors`` file, written atomically, on
    any filesystem (``core.storage``).

    Data is ``{"tensors": {name: Tensor}, "config": {...}}``. Loading never unpickles
    anything: safetensors holds raw tensors and a string header.
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = storage.data_path(filepath)
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with storage.local_copy(self._filepath) as local:
            with safe_open(str(local), framework="pt") as handle:
                header = handle.metadata() or {}
            return {"tensors": load_file(str(local)),
                    "config": json.loads(header.get("config", "{}"))}

    def save(self, data: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in data["tensors"].items()}
        with atomic_path(self._filepath) as staging:
            save_file(tensors, str(staging), metadata={"config": json.dumps(data.get("config", {}))})

    def _exists(self) -> bool:
        return self._filepath.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
