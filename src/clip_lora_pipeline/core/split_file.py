"""Split files in CoOp's format: fixed train / val / test lists shared across papers.

A split file is JSON ``{"train": [[path, label, class name], ...], "val": [...],
"test": [...]}`` (CoOp's ``split_zhou_<Name>.json``, also read by Tip-Adapter and
CLIP-LoRA). Its paths are relative to the dataset's image folder, which each source
names by its ``image_dir`` (a prefix relative to the dataset root).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.errors import UserError
from clip_lora_pipeline.core.manifest import SPLITS, make_manifest

_SHOWN = 5  # missing or bad entries named in an error


class SplitFileError(UserError, ValueError):
    """A split file is malformed, inconsistent, or lists files that are not on disk."""


def readable(class_name: str) -> str:
    # CoOp's files keep folder names ("apple_pie"); CoOp and CLIP-LoRA replace "_" by
    # " " when they build the prompts, and our class names are the prompts' words.
    return class_name.replace("_", " ")


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SplitFileError(f"Split file {path} not found.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SplitFileError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}). "
            "Delete it to fetch it again, or fix it."
        ) from None
    if not isinstance(data, dict):
        raise SplitFileError(f"{path}: expected an object with keys {list(SPLITS)}.")
    unknown = sorted(set(data) - set(SPLITS))
    if unknown:
        raise SplitFileError(f"{path}: unknown keys {unknown}; a split file has {list(SPLITS)}.")
    empty = [s for s in ("train", "test") if not data.get(s)]
    if empty:
        raise SplitFileError(
            f"{path}: {empty} missing or empty; a split file needs train and test images "
            "(val is optional: it is then carved from train)."
        )
    return data


def _relative(entry: Any) -> str | None:
    """The entry's path when it is a clean relative POSIX path, else None."""
    if not isinstance(entry, str) or not entry or "\\" in entry:
        return None
    pure = PurePosixPath(entry)
    return None if pure.is_absolute() or ".." in pure.parts else pure.as_posix()


def _rows(path: Path, data: dict[str, Any]) -> list[tuple[str, str, int, str]]:
    """(split, relative path, label, class name) for every entry, in file order."""
    rows, bad = [], []
    for split in SPLITS:
        entries = data.get(split) or []
        if not isinstance(entries, list):
            raise SplitFileError(f"{path}: '{split}' must be a list of entries.")
        for index, entry in enumerate(entries):
            ok = isinstance(entry, list) and len(entry) == 3
            rel = _relative(entry[0]) if ok else None
            label, name = (entry[1], entry[2]) if ok else (None, None)
            if rel is None or type(label) is not int or not isinstance(name, str) or not name:
                bad.append(f"{split}[{index}] = {entry!r}")
                continue
            rows.append((split, rel, label, name))
    if bad:
        raise SplitFileError(
            f"{path}: {len(bad)} malformed entries, e.g. {bad[:_SHOWN]}. Each entry is "
            "[relative path, integer label, class name]."
        )
    return rows


def _class_names(path: Path, rows: list[tuple[str, str, int, str]]) -> list[str]:
    """Names by label; every label has one name, every name one label, labels 0..K-1."""
    name_of: dict[int, str] = {}
    for _, rel, label, name in rows:
        if name_of.setdefault(label, name) != name:
            raise SplitFileError(
                f"{path}: label {label} is both '{name_of[label]}' and '{name}' (e.g. {rel})."
            )
    labels = sorted(name_of)
    if labels != list(range(len(labels))):
        missing = sorted(set(range(max(labels) + 1)) - set(labels))
        raise SplitFileError(
            f"{path}: labels must be 0..K-1 with none skipped; found {labels[0]}..{labels[-1]}"
            + (f", missing {missing[:10]}" if missing else "") + "."
        )
    names = [readable(name_of[label]) for label in labels]
    seen: dict[str, int] = {}
    for label, name in enumerate(names):
        if seen.setdefault(name, label) != label:
            raise SplitFileError(
                f"{path}: labels {seen[name]} and {label} are both named '{name}'."
            )
    return names


def _check_paths(path: Path, root: Path, image_dir: str, relatives: list[str],
                 layout: str) -> None:
    counts = pd.Series(relatives).value_counts()
    twice = counts[counts > 1].index.tolist()
    if twice:
        raise SplitFileError(f"{path}: {len(twice)} files listed twice, e.g. {twice[:_SHOWN]}.")
    base = root / image_dir
    missing = [r for r in relatives if not (base / r).is_file()]
    if missing:
        raise SplitFileError(
            f"{path}: {len(missing)} of {len(relatives)} listed files are missing under "
            f"{base}, e.g. {missing[:_SHOWN]}. Are the images unpacked? Expected layout "
            f"under {root}:\n{layout or '  ' + (image_dir or '.') + '/<listed paths>'}"
        )


def read_split_file(path: Path, root: Path, image_dir: str = "", layout: str = ""
                    ) -> pd.DataFrame:
    """The manifest a split file describes: its train / val / test lists as
    ``source_split``, its labels, and its class names (underscores as spaces).

    ``image_dir`` is where the file's paths start, relative to ``root``; manifest paths
    are relative to ``root``. ``layout`` is shown when listed files are missing.
    """
    path = storage.data_path(path)
    rows = _rows(path, _load(path))
    names = _class_names(path, rows)
    _check_paths(path, storage.data_path(root), image_dir, [rel for _, rel, _, _ in rows], layout)
    prefix = PurePosixPath(image_dir) if image_dir else PurePosixPath()
    return make_manifest(
        [(prefix / rel).as_posix() for _, rel, _, _ in rows],
        [label for _, _, label, _ in rows],
        names,
        [split for split, _, _, _ in rows],
    )


def _entries(frame: pd.DataFrame, image_dir: str) -> list[list]:
    prefix = f"{image_dir.rstrip('/')}/" if image_dir else ""
    outside = [p for p in frame["path"] if not p.startswith(prefix)]
    if outside:
        raise SplitFileError(f"paths {outside[:_SHOWN]} are not under image_dir '{image_dir}'.")
    return [[p[len(prefix):], int(label), name]
            for p, label, name in zip(frame["path"], frame["label"], frame["class_name"])]


def write_split_file(path: Path, manifest: pd.DataFrame, image_dir: str = "") -> Path:
    """Write ``manifest`` (every row with a ``source_split``) as a split file whose
    paths are relative to ``image_dir``. Written to a temporary name, then renamed."""
    splits = manifest["source_split"]
    if splits.isna().any() or not splits.isin(SPLITS).all():
        raise SplitFileError(
            f"{path}: every manifest row needs a source_split in {list(SPLITS)} to be written."
        )
    data = {split: _entries(manifest[splits == split], image_dir) for split in SPLITS}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
