"""Where the project's data lives: a local folder, or a folder on any fsspec filesystem
(``s3://bucket/clip``, ``gs://``, ``abfs://``, ``memory:///`` in tests), named once as
``data_root`` in ``conf/<env>/globals.yml``.

A local location stays a ``pathlib.Path`` read with the builtin ``open``, as fast as
before; any other is a ``universal_pathlib`` ``UPath``, which gives the same ``Path`` API
(``/``, ``exists``, ``iterdir``, ``read_text``...) over fsspec, so code that only joins,
lists and reads works on both. Credentials come from fsspec's usual places (the
provider's environment variables, ``FSSPEC_<PROTOCOL>_<KEY>`` variables, fsspec's
config files). Writing atomically is ``core.atomic``'s concern.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.utils import get_protocol
from upath import UPath

Location = str | os.PathLike | UPath
LOCAL = ("file", "local")
PIPE_LIMIT = 64 << 20  # bytes put from memory in one request; larger files are streamed


def is_remote(location: Location) -> bool:
    """Whether ``location`` is on another filesystem than the local one."""
    if isinstance(location, UPath):
        return location.protocol not in ("", *LOCAL)
    return get_protocol(os.fspath(location)) not in LOCAL


def data_path(location: Location) -> Path | UPath:
    """A local location as a plain ``Path``; any other as a ``UPath``."""
    if isinstance(location, UPath):
        return location if is_remote(location) else Path(location.path)
    if not is_remote(location):
        text = os.fspath(location)
        return Path(text.split("://", 1)[1] if text.startswith("file://") else text)
    return UPath(os.fspath(location))


def join(root: Location, *parts: str) -> str:
    """``root`` joined with POSIX ``parts``, as text (a URL where remote). As with
    pathlib, a part that is a location of its own (absolute, or a URL) starts afresh."""
    path = data_path(root)
    for part in parts:
        path = data_path(part) if is_remote(part) else path / part
    return str(path)


def filesystem_for(location: Location) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of ``location`` and its path on it."""
    path = data_path(location)
    if isinstance(path, UPath):
        return path.fs, path.path
    return fsspec.filesystem("file"), str(path)


def open_for_read(location: Location) -> IO[bytes]:
    """A binary file object, to use in a ``with`` block."""
    if not is_remote(location):
        return open(data_path(location), "rb")  # noqa: SIM115 - the caller closes it
    fs, path = filesystem_for(location)
    return fs.open(path, "rb")


def read_bytes(location: Location) -> bytes:
    with open_for_read(location) as handle:
        return handle.read()


def exists(location: Location) -> bool:
    return data_path(location).exists()


def is_dir(location: Location) -> bool:
    return data_path(location).is_dir()


def is_file(location: Location) -> bool:
    return data_path(location).is_file()


def listdir(folder: Location) -> list[str]:
    """The names of the entries of ``folder``, sorted; none when it does not exist. On
    an object store a folder is only a common prefix: a missing one is an empty one, and
    the listing is read afresh (another worker may have written since)."""
    if not is_remote(folder):
        path = data_path(folder)
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    fs, path = filesystem_for(folder)
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(name.rstrip("/").rsplit("/", 1)[-1] for name in entries
                  if name.rstrip("/") != path.rstrip("/"))


def files_under(folder: Location) -> list[Path | UPath]:
    """Every file under ``folder``, at any depth, hidden ones included, sorted. Remote:
    one recursive listing, not a request per folder."""
    root = data_path(folder)
    if not is_remote(root):
        return sorted(p for p in root.rglob("*") if p.is_file())
    fs, path = filesystem_for(root)
    fs.invalidate_cache(path)
    prefix = path.rstrip("/") + "/"
    return [root.joinpath(name[len(prefix):]) for name in sorted(fs.find(path))
            if name.startswith(prefix)]


def signature(location: Location) -> list[Any]:
    """What changes when the file is written again, without reading it: the size and
    modification time locally, the size and fsspec's ``ukey`` (an ETag or a hash of the
    object's info) elsewhere, where modification times may be missing or coarse."""
    if not is_remote(location):
        stat = data_path(location).stat()
        return [stat.st_size, stat.st_mtime_ns]
    fs, path = filesystem_for(location)
    return [fs.size(path), fs.ukey(path)]


def identity(location: Location) -> str:
    """A key naming the file wherever the run starts from."""
    path = data_path(location)
    return str(path if is_remote(path) else path.resolve())


def upload(local_file: Path, final: Location) -> None:
    """``put_whole`` onto ``final``'s filesystem."""
    fs, path = filesystem_for(final)
    put_whole(fs, local_file, path)


def put_whole(fs: fsspec.AbstractFileSystem, local_file: Path, path: str) -> None:
    """A finished local file onto ``path`` in one request, which an object store shows
    whole or not at all: its bytes in one put (``pipe_file``; fsspec's memory
    filesystem, too, stores them in one step, where its ``put_file`` shows the object
    while it fills), or, over ``PIPE_LIMIT``, a multipart upload completed at its end."""
    if local_file.stat().st_size <= PIPE_LIMIT:
        fs.pipe_file(path, local_file.read_bytes())
    else:
        fs.put_file(str(local_file), path)
    fs.invalidate_cache(path)


def remove_tree(location: Location) -> None:
    """Delete a folder and everything in it; nothing when it is not there."""
    if not is_remote(location):
        shutil.rmtree(data_path(location), ignore_errors=True)
        return
    fs, path = filesystem_for(location)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@contextmanager
def local_copy(location: Location) -> Iterator[Path]:
    """A local file with the content of ``location``, for libraries that only read a
    file name (safetensors' ``safe_open``): the file itself where it is local, else a
    temporary download, removed after the block."""
    if not is_remote(location):
        yield data_path(location)
        return
    with tempfile.TemporaryDirectory(prefix="clip-lora-") as folder:
        copy = Path(folder) / data_path(location).name
        fs, path = filesystem_for(location)
        fs.get_file(path, str(copy))
        yield copy


def described_location(describe: dict[str, Any]) -> str | None:
    """The full location of a catalog dataset from its ``_describe()``: kedro-datasets
    give the path without its protocol, and the protocol beside it."""
    filepath = describe.get("filepath")
    if not filepath:
        return None
    protocol = describe.get("protocol") or "file"
    if protocol in LOCAL or "://" in str(filepath):
        return str(filepath)
    return f"{protocol}://{filepath}"

