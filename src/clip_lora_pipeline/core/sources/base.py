"""What every data source provides: the files to fetch and a manifest of what is on disk."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from clip_lora_pipeline.core.download import RemoteFile, fetch, missing_files
from clip_lora_pipeline.core.errors import UserError
from clip_lora_pipeline.core.split_file import read_split_file


class SourceError(UserError, ValueError):
    """A source's files are missing or not in the expected layout."""


def text_lines(path: Path) -> list[str]:
    """The non-blank lines of a publisher's list file, stripped."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class Source(ABC):
    """A data source. Subclasses set ``name`` and implement ``index``.

    ``remote_files`` lists what the publisher hosts; ``prepare`` fetches whatever of
    it is missing under ``root``; ``index`` reads the on-disk layout into a manifest.
    Options from the dataset's parameters are passed as keyword arguments to all three.

    The few-shot benchmark sources (CoOp's 11 datasets) set ``coop_protocol``, and
    ``coop_split`` to CoOp's split file where CoOp uses one (None where CoOp reads the
    official lists, as ``index`` does). ``image_dir`` is the folder, relative to the
    root, that a split file's paths start from.

    ``any_filesystem``: the source lists and reads its root through ``core.storage``, so
    the root may be on an object store (``s3://...``); the others download and unpack
    archives and read the publisher's lists with local-only libraries.
    """

    name: ClassVar[str]
    layout: ClassVar[str] = ""
    any_filesystem: ClassVar[bool] = False
    coop_protocol: ClassVar[bool] = False
    coop_split: ClassVar[RemoteFile | None] = None
    image_dir: ClassVar[str] = ""

    def remote_files(self, **options: Any) -> list[RemoteFile]:
        return []

    def prepare(self, root: Path, timeout: float = 30.0, **options: Any) -> None:
        fetch(self.remote_files(**options), root, timeout=timeout)

    def is_prepared(self, root: Path, **options: Any) -> bool:
        return root.is_dir() and not missing_files(self.remote_files(**options), root)

    @abstractmethod
    def index(self, root: Path, **options: Any) -> pd.DataFrame:
        """Read the on-disk layout under ``root`` into a manifest."""

    def index_split_file(self, root: Path, split_file: Path) -> pd.DataFrame:
        """The manifest a CoOp-format split file gives, its paths under ``image_dir``."""
        return read_split_file(split_file, root, self.image_dir, self.layout)

    def check_options(self, dataset: str, options: dict[str, Any]) -> None:
        """Reject option names this source does not take, naming the parameter."""
        accepted = {
            name
            for method in (self.index, self.remote_files, self.prepare, self.is_prepared)
            for name in inspect.signature(method).parameters
        } - {"root", "timeout", "options"}
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise SourceError(
                f"dataset_configs.{dataset}.options: source '{self.name}' has no "
                f"option(s) {unknown}; "
                f"it takes {sorted(accepted) or 'no options'}."
            )

    def require(self, root: Path, *relative: str) -> None:
        """Fail with the expected layout when files are missing."""
        missing = [r for r in relative if not (root / r).exists()]
        if missing:
            raise SourceError(
                f"{self.name}: {[str(root / m) for m in missing]} not found. "
                f"Expected layout under {root}:\n{self.layout}"
            )
