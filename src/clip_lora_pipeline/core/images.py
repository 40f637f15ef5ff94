"""Finding image files, decoding images, converting every mode to RGB, and validating a
manifest's files."""

from __future__ import annotations

import logging
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm
from upath import UPath

from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.color import to_rgb
from clip_lora_pipeline.core.errors import SettingsError, UserError
from clip_lora_pipeline.core.runtime import usable_cpus
from clip_lora_pipeline.core.validation_store import ValidationStore, content_hashes

logger = logging.getLogger(__name__)

ON_BAD_IMAGE = ("skip", "fail")


class BadImagesError(UserError, ValueError):
    """Validation stops the run: files were rejected and ``on_bad_image`` is 'fail', or
    a class has no readable image left.

    ``rejected`` is the rejected-images table: nodes write no files, so a project hook
    (``ProjectHooks.on_node_error``) saves it before the run stops.
    """

    def __init__(self, message: str, rejected: pd.DataFrame | None = None) -> None:
        super().__init__(message)
        self.rejected = rejected


def image_files(folder: Path | UPath) -> list[Path | UPath]:
    """Every visible file under ``folder``, searched recursively, sorted by its path
    relative to ``folder`` (as a POSIX string). ``folder`` may be on any filesystem
    (``core.storage``); elsewhere than locally there are no links or devices.

    Images or not: validation then rejects the non-images and says why, instead of an
    extension filter dropping them unseen. Files and folders whose name starts with '.'
    are skipped (hidden folders are not entered); links to folders are not followed.
    Broken links are listed (validation rejects them as "file not found"); FIFOs,
    devices and sockets, or links to them, never are: reading one would block.
    """
    if storage.is_remote(folder):
        root = storage.data_path(folder)
        return [p for p in storage.files_under(root)
                if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    found = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = Path(current) / name
            if not name.startswith(".") and (
                path.is_file() or (path.is_symlink() and not path.exists())
            ):
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def load_rgb(path: str | os.PathLike | UPath) -> Image.Image:
    """Open and fully decode ``path`` (on any filesystem) as an RGB image."""
    with storage.open_for_read(path) as file, Image.open(file) as image:
        image.load()
        return to_rgb(image)


# PIL raises UnidentifiedImageError both for a file that is no image and for a known
# format whose header it cannot parse (a JPEG or PNG signature followed by garbage);
# the signature tells the corrupt image apart from the non-image.
_SIGNATURES = {
    b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF87a": "GIF",
    b"GIF89a": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
}


def sniff_format(path: Path | UPath) -> str | None:
    """The image format ``path``'s first bytes announce, or None."""
    try:
        with storage.open_for_read(path) as file:
            head = file.read(12)
    except OSError:  # gone or unreadable since PIL opened it: no signature to go by
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for sig, name in _SIGNATURES.items() if head.startswith(sig)), None)


def _unidentified_reason(path: Path | UPath) -> str:
    fmt = sniff_format(path)
    if fmt is None:
        return "not an image file (unrecognised format)"
    return f"truncated or corrupt image: starts like a {fmt} file but cannot be decoded"


@dataclass(frozen=True)
class ImageCheck:
    width: int | None
    height: int | None
    mode: str | None
    reason: str | None


def check_image(path: Path | UPath) -> ImageCheck:
    """Decode ``path`` once; on failure say why, in words a user can act on."""
    try:
        if path.stat().st_size == 0:
            return ImageCheck(None, None, None, "empty file (0 bytes)")
        with storage.open_for_read(path) as file, Image.open(file) as image:
            mode = image.mode
            image.load()
            width, height = to_rgb(image).size
    except FileNotFoundError:
        return ImageCheck(None, None, None, "file not found")
    except UnidentifiedImageError:
        return ImageCheck(None, None, None, _unidentified_reason(path))
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
    workers = num_workers or min(8, usable_cpus() * 2)
    # PIL releases the GIL while decoding, so threads use every core without pickling.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(
            tqdm(pool.map(check_image, paths), total=len(paths), desc="Validating images",
                 unit="img", mininterval=1.0)
        )


def cached_checks(paths: list[Path], hashes: list[str | None], cache: str | Path,
                  num_workers: int | None = None) -> list[ImageCheck]:
    """``check_images``, read back from the validation cache (``core.validation_store``)
    for every file whose content (``hashes``) it holds; the files checked are added to it."""
    store = ValidationStore(cache)
    checks = [None if r is None else ImageCheck(**r) for r in store.lookup(hashes)]
    to_check = [i for i, check in enumerate(checks) if check is None]
    fresh = check_images([paths[i] for i in to_check], num_workers) if to_check else []
    _store_fresh(store, [paths[i] for i in to_check], [hashes[i] for i in to_check], fresh)
    for i, check in zip(to_check, fresh):
        checks[i] = check
    logger.info("validate: %d of %d images checked, %d read back from the validation "
                "cache %s", len(to_check), len(paths), len(paths) - len(to_check), store.folder)
    return checks


def _store_fresh(store: ValidationStore, paths: list[Path], hashes: list[str | None],
                 checks: list[ImageCheck]) -> None:
    """Add the results that belong to the content hashed before the check. Hashed again:
    a file rewritten while it was checked has a result that belongs to neither content.
    A reason naming the path, should a decoder's message hold it, belongs to that path."""
    after = content_hashes(paths)
    keep = [k for k, (path, before, now, check) in enumerate(zip(paths, hashes, after, checks))
            if now is not None and now == before and str(path) not in (check.reason or "")]
    store.add([hashes[k] for k in keep], [asdict(checks[k]) for k in keep])


def validate_images(
    manifest: pd.DataFrame,
    root: Path,
    on_bad_image: str = "skip",
    num_workers: int | None = None,
    cache: str | Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode every image of ``manifest`` once, in parallel threads; with a ``cache``
    folder, only those whose content it has no result for (``cached_checks``).

    Returns the manifest of good images (with width, height, original mode and
    ``content_hash``, ``core.store.file_hash`` of the bytes checked) and a table of
    rejected files with their reason. Every table made from the good images carries
    each image's content hash, so a node that reads images by their paths depends on
    their content through its input tables (``fingerprints``). With ``on_bad_image='fail'`` any
    rejection raises, listing the first few files; a class left without a readable
    image always raises. Both errors carry the rejected table (``BadImagesError.rejected``).
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise SettingsError(
            f"validation.on_bad_image must be one of {ON_BAD_IMAGE}, got {on_bad_image!r}."
        )
    paths = [root / p for p in manifest["path"]]
    hashes = content_hashes(paths)
    checks = cached_checks(paths, hashes, cache, num_workers) if cache else check_images(
        paths, num_workers)
    reasons = pd.Series([c.reason for c in checks], index=manifest.index, dtype="string")
    bad = reasons.notna()
    rejected = manifest.loc[bad, ["path", "class_name"]].assign(reason=reasons[bad])
    rejected = rejected.reset_index(drop=True)
    if bad.any() and on_bad_image == "fail":
        raise BadImagesError(
            f"{int(bad.sum())} of {len(manifest)} images under {root} cannot be used:\n"
            f"{_listing(rejected, root)}\nFix or remove them, or set validation.on_bad_image: "
            "skip to exclude them and list them in the rejected-images table.",
            rejected,
        )
    lost = sorted(set(manifest["class_name"]) - set(manifest.loc[~bad, "class_name"]))
    if lost:
        raise BadImagesError(_lost_classes_message(manifest, rejected, root, lost), rejected)
    good = manifest.loc[~bad].copy()
    good["width"] = pd.array([c.width for c, b in zip(checks, bad) if not b], dtype="int64")
    good["height"] = pd.array([c.height for c, b in zip(checks, bad) if not b], dtype="int64")
    good["mode"] = pd.array([c.mode for c, b in zip(checks, bad) if not b], dtype="string")
    good["content_hash"] = pd.array([h for h, b in zip(hashes, bad) if not b], dtype="string")
    return good.reset_index(drop=True), rejected


def _listing(rejected: pd.DataFrame, root: Path, limit: int = 10) -> str:
    lines = [f"  {root / row.path}: {row.reason}" for row in rejected.head(limit).itertuples()]
    if len(rejected) > limit:
        lines.append(f"  ... and {len(rejected) - limit} more")
    return "\n".join(lines)


def class_folders(manifest: pd.DataFrame, root: Path, class_name: str) -> list[Path]:
    """The folders on disk that hold a class's files: per source split, the deepest
    folder containing all of them (the class folder of an image_folder dataset)."""
    rows = manifest[manifest["class_name"] == class_name]
    groups = rows.groupby(rows["source_split"].fillna(""), sort=True)["path"]
    return [
        root / posixpath.commonpath([posixpath.dirname(p) for p in paths])
        for _, paths in groups
    ]


def _lost_classes_message(
    manifest: pd.DataFrame, rejected: pd.DataFrame, root: Path, lost: list[str]
) -> str:
    # Name the folders as they are on disk: the readable class name ("golden retriever")
    # is not what the user has to look for.
    where = [
        f"  {', '.join(map(str, class_folders(manifest, root, name)))} (class {name!r}): "
        f"{int((rejected['class_name'] == name).sum())} file(s), none readable"
        for name in lost[:10]
    ] + ([f"  ... and {len(lost) - 10} more classes"] if len(lost) > 10 else [])
    files = rejected[rejected["class_name"].isin(lost)]
    return (
        f"{len(lost)} class(es) under {root} have no readable image left:\n"
        + "\n".join(where) + f"\nTheir files:\n{_listing(files, root)}\n"
        "Fix or replace those files, or remove the class (for an image_folder dataset, "
        "add its folder to options.exclude). The rejected-images table lists every file "
        "and its reason."
    )
