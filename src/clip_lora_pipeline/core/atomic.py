"""Writing a file or a folder so that it is never seen half-written: the content goes to
a hidden sibling, which is renamed onto the final name only once it is complete. A run
killed mid-write leaves the previous version (or nothing), never a truncated one, so
``--only-missing-outputs`` and a resumed training cannot take it for a finished one.
The catalog datasets (``datasets.py``) and the training checkpoints use these."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A staging path beside ``final`` (``.<name>.partial-<pid>``) to write one file to;
    ``os.replace``d onto ``final`` when the block ends without error, removed when it
    raises (an interrupt included)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.partial-{os.getpid()}")
    try:
        yield staging
        os.replace(staging, final)
    finally:
        staging.unlink(missing_ok=True)


def _previous(final: Path) -> Path:
    return final.with_name(final.name + ".old")


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """A fresh hidden staging folder beside ``final`` to fill; it replaces ``final``
    when the block ends without error, and is removed when it raises.

    A folder cannot be renamed onto a non-empty one, so the previous ``final`` steps
    aside as ``<name>.old`` for the moment between the two renames; ``settled_dir``
    puts it back if a kill fell in that moment."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    previous = _previous(final)
    try:
        yield staging
        if final.exists():
            # an .old left by a kill after the last rename would block this one
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(final, previous)
        os.replace(staging, final)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def settled_dir(final: Path) -> bool:
    """Whether the folder ``atomic_dir`` writes exists; a kill between its two renames
    left only the previous one, under ``<name>.old``: it is put back first."""
    final = Path(final)
    previous = _previous(final)
    if not final.exists() and previous.exists():
        os.replace(previous, final)
    return final.exists()
