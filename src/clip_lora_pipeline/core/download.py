"""Fetching remote files: temporary name, checksum, atomic rename, atomic extraction."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import gdown
from tqdm.auto import tqdm

from clip_lora_pipeline.core.errors import UserError

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_USER_AGENT = "clip-lora-pipeline (python urllib)"


class DownloadError(UserError, RuntimeError):
    """A remote file could not be fetched or failed its checksum."""


@dataclass(frozen=True)
class RemoteFile:
    """One file a source publishes.

    ``md5`` is checked when the publisher gives one. ``extract`` unpacks the archive
    into the dataset root and then deletes it. ``provides`` is the path, relative to
    the root, that exists once this file is in place; it is how a re-run knows the
    file is no longer missing. ``drive_id`` marks a Google Drive file, fetched with
    gdown instead of a plain GET.
    """

    url: str
    filename: str
    provides: str
    md5: str | None = None
    extract: bool = False
    drive_id: str | None = None

    @classmethod
    def google_drive(cls, drive_id: str, filename: str, provides: str | None = None,
                     md5: str | None = None, extract: bool = False) -> RemoteFile:
        """A file shared on Google Drive (CoOp's split files). ``url`` is the page a
        person opens to fetch it by hand."""
        return cls(f"https://drive.google.com/file/d/{drive_id}/view", filename,
                   provides or filename, md5, extract, drive_id)


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _manual_placement_hint(remote: RemoteFile, target: Path) -> str:
    done = [f"checked against md5 {remote.md5}"] if remote.md5 else []
    if remote.extract:
        done.append("unpacked in place")
    return (
        f"Without network access, download {remote.url} on another machine and "
        f"place it at {target}, then re-run"
        + (f"; it is {' and '.join(done)}." if done else ".")
    )


def _receive_http(remote: RemoteFile, part: Path, timeout: float) -> str:
    """Write ``remote`` to ``part`` and return its md5, hashed on the way in (no
    second pass over a 5 GB archive); fail when the transfer stops short."""
    request = urllib.request.Request(remote.url, headers={"User-Agent": _USER_AGENT})
    digest = hashlib.md5(usedforsecurity=False)
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            expected = response.length
            with (
                open(part, "wb") as out,
                tqdm(total=expected, unit="B", unit_scale=True, desc=remote.filename) as bar,
            ):
                for block in iter(lambda: response.read(_CHUNK), b""):
                    out.write(block)
                    digest.update(block)
                    received += len(block)
                    bar.update(len(block))
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"Could not download {remote.url}: {reason}.") from exc
    if expected is not None and received != expected:
        raise DownloadError(
            f"Download of {remote.url} stopped after {received} of {expected} bytes. "
            "Re-run to try again."
        )
    return digest.hexdigest()


def _receive_drive(remote: RemoteFile, part: Path, timeout: float) -> str | None:
    """Write the Google Drive file ``remote.drive_id`` to ``part`` with gdown, which
    handles Drive's confirmation page for large files. gdown writes into our open
    file, so its own temporary files never land beside the dataset."""
    try:
        with open(part, "wb") as out:
            gdown.download(id=remote.drive_id, output=out, quiet=False,
                           use_cookies=False, timeout=timeout)
    # gdown raises its own, requests' and OS errors alike; each means the same here.
    except Exception as exc:
        raise DownloadError(
            f"Could not download {remote.filename} from Google Drive ({remote.url}): {exc}."
        ) from exc
    return None  # hashed from disk by the caller, when an md5 is known


def download_file(remote: RemoteFile, dest_dir: Path, timeout: float = 30.0) -> Path:
    """Download ``remote`` into ``dest_dir`` unless a verified copy is already there.

    The bytes go to ``<name>.part`` and are renamed only after the length and md5
    check out, so an interrupted download never leaves a file that looks complete.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / remote.filename
    if target.exists():
        if remote.md5 is None or md5_of(target) == remote.md5:
            logger.info("Using %s already on disk", target)
            return target
        logger.warning("%s fails its md5 check; downloading it again", target)
        target.unlink()

    part = target.with_name(target.name + ".part")
    receive = _receive_drive if remote.drive_id else _receive_http
    try:
        digest = receive(remote, part, timeout)
    except DownloadError as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{exc} {_manual_placement_hint(remote, target)}") from exc
    if remote.md5 is not None and (actual := digest or md5_of(part)) != remote.md5:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{remote.url} has md5 {actual}, expected {remote.md5}. "
            "The file is corrupt or the publisher changed it; nothing was kept."
        )
    os.replace(part, target)
    return target


def extract_archive(archive: Path, dest_dir: Path) -> list[Path]:
    """Unpack ``archive`` into ``dest_dir`` atomically per top-level entry.

    Members are unpacked into a temporary folder beside the destination and each
    top-level entry is renamed into place at the end, so a partly unpacked archive is
    never mistaken for a complete one.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=dest_dir) as tmp:
        staging = Path(tmp)
        name = archive.name.lower()
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(staging)
        elif name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
            with tarfile.open(archive) as tarred:
                tarred.extractall(staging, filter="data")
        else:
            raise DownloadError(
                f"Do not know how to unpack {archive}: expected .zip, .tar, .tar.gz or .tgz."
            )
        placed = []
        for entry in sorted(staging.iterdir()):
            final = dest_dir / entry.name
            if final.is_dir():
                shutil.rmtree(final)
            elif final.exists():
                final.unlink()
            os.replace(entry, final)
            placed.append(final)
    return placed


def missing_files(files: Iterable[RemoteFile], dest_dir: Path) -> list[RemoteFile]:
    return [remote for remote in files if not (dest_dir / remote.provides).exists()]


def fetch(files: Iterable[RemoteFile], dest_dir: Path, timeout: float = 30.0) -> None:
    """Download (and unpack) into ``dest_dir`` every file that is not there yet."""
    for remote in missing_files(files, dest_dir):
        path = download_file(remote, dest_dir, timeout=timeout)
        if remote.extract:
            logger.info("Unpacking %s", path)
            extract_archive(path, dest_dir)
            path.unlink()
