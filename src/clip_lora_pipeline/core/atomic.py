"""Writing a file or a folder so that it is never seen half-written: the content goes to
a hidden sibling, which is renamed onto the final name only once it is complete. A run
killed mid-write leaves the previous version (or nothing), never a truncated one, so
``--only-missing-outputs`` and a resumed training cannot take it for a finished one.
The catalog datasets (``datasets.py``) and the training checkpoints use these.

On an object store (any fsspec filesystem but the local one, ``core.storage``) there
is no atomic rename (fsspec's ``mv`` there is a copy, then a delete), but one put of a
finished file is atomic per object: a file is staged locally and put in one call; a
folder is put under a new version prefix, and a one-object pointer to it (``CURRENT``)
is written last."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from upath import UPath

from clip_lora_pipeline.core import storage

POINTER = "CURRENT"  # on an object store: names the complete version of a folder


@contextmanager
def atomic_path(final: Path | UPath | str) -> Iterator[Path]:
    """A local staging path to write one file to: beside ``final``
    (``.<name>.partial-<pid>``) and ``os.replace``d onto it when the block ends without
    error, or, for a remote ``final``, in a temporary folder and put in one call; removed
    when the block raises (an interrupt included)."""
    if storage.is_remote(final):
        with tempfile.TemporaryDirectory(prefix="clip-lora-") as folder:
            staging = Path(folder) / storage.data_path(final).name
            yield staging
            storage.upload(staging, final)
        return
    final = storage.data_path(final)
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
def atomic_dir(final: Path | UPath | str) -> Iterator[Path]:
    """A fresh hidden staging folder beside ``final`` to fill; it replaces ``final``
    when the block ends without error, and is removed when it raises. Read what it holds
    through ``current_dir(final)``.

    A folder cannot be renamed onto a non-empty one, so the previous ``final`` steps
    aside as ``<name>.old`` for the moment between the two renames; ``settled_dir``
    puts it back if a kill fell in that moment. Remote: ``_remote_dir``."""
    if storage.is_remote(final):
        with _remote_dir(storage.data_path(final)) as staging:
            yield staging
        return
    final = storage.data_path(final)
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


def settled_dir(final: Path | UPath | str) -> bool:
    """Whether the folder ``atomic_dir`` writes exists; a kill between its two renames
    left only the previous one, under ``<name>.old``: it is put back first."""
    if storage.is_remote(final):
        return (storage.data_path(final) / POINTER).exists()
    final = storage.data_path(final)
    previous = _previous(final)
    if not final.exists() and previous.exists():
        os.replace(previous, final)
    return final.exists()


def current_dir(final: Path | UPath | str) -> Path | UPath:
    """Where the complete content of a folder ``atomic_dir`` wrote is: the folder itself
    locally, the version its pointer names remotely."""
    final = storage.data_path(final)
    if not storage.is_remote(final) or not (final / POINTER).exists():
        return final
    return final / (final / POINTER).read_text().strip()


@contextmanager
def _remote_dir(final: UPath) -> Iterator[Path]:
    """A local staging folder whose files are put under ``final/v-<time>-<pid>-<random>/``,
    then ``final/CURRENT`` (one object) is pointed at that version and the other versions
    are deleted. A kill before the pointer leaves the previous version current and an
    orphan prefix, which the next complete write deletes."""
    with tempfile.TemporaryDirectory(prefix="clip-lora-") as folder:
        staging = Path(folder)
        yield staging
        version = f"v-{time.time_ns():x}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        for file in sorted(p for p in staging.rglob("*") if p.is_file()):
            storage.upload(file, final / version / file.relative_to(staging).as_posix())
        with atomic_path(final / POINTER) as pointer:
            pointer.write_text(version)
    for name in storage.listdir(final):
        if name not in (version, POINTER):
            storage.remove_tree(final / name)
