"""Catalog dataset types that write atomically.

kedro-datasets writes straight to the final path, so a run killed mid-write leaves a
file that exists but is cut short, and ``--only-missing-outputs`` would then skip it.
These types write to a hidden sibling and rename it into place when it is complete.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io.core import get_filepath_str
from kedro_datasets.json import JSONDataset as _JSONDataset
from kedro_datasets.pandas import ParquetDataset as _ParquetDataset


class AtomicSaveMixin:
    """Stage a local save under a temporary name, then ``os.replace`` it."""

    _staging: PurePosixPath | None = None

    def _get_save_path(self) -> PurePosixPath:
        return self._staging or super()._get_save_path()

    def save(self, data: Any) -> None:
        if self._protocol != "file":
            super().save(data)
            return
        final = Path(get_filepath_str(super()._get_save_path(), self._protocol))
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = final.with_name(f".{final.name}.partial-{os.getpid()}")
        self._staging = PurePosixPath(staging.as_posix())
        try:
            super().save(data)
            os.replace(staging, final)
        finally:
            self._staging = None
            staging.unlink(missing_ok=True)


class ParquetDataset(AtomicSaveMixin, _ParquetDataset):
    """``pandas.ParquetDataset`` with atomic local writes."""


class JSONDataset(AtomicSaveMixin, _JSONDataset):
    """``json.JSONDataset`` with atomic local writes."""
