"""A user's own images: one sub-folder per class, optionally under train/ val/ test/."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from clip_lora_pipeline.core.images import image_files
from clip_lora_pipeline.core.manifest import SPLITS, make_manifest
from clip_lora_pipeline.core.sources.base import Source, SourceError

logger = logging.getLogger(__name__)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def default_class_name(folder: str) -> str:
    return folder.replace("_", " ").strip()


# Folder names that usually hold "everything else" rather than a class (Caltech-101's
# BACKGROUND_Google): as a class it gets a prompt like "a photo of a background".
_CLUTTER = re.compile(
    r"background.*|clutter|misc|miscellaneous|others?|unknown|none|junk|unlabell?ed",
    re.IGNORECASE,
)


def _excluded(root: Path, folders: set[str], exclude: list[str] | None) -> set[str]:
    """The class folders named in ``options.exclude``; unknown names are warned about."""
    if exclude is None:
        return set()
    if isinstance(exclude, str) or not all(isinstance(n, str) for n in exclude):
        raise SourceError(
            f"image_folder {root}: options.exclude must be a list of class folder names, "
            f"e.g. exclude: [BACKGROUND_Google]; got {exclude!r}."
        )
    unknown = sorted(set(exclude) - folders)
    if unknown:
        logger.warning(
            "image_folder %s: options.exclude names folder(s) %s that are not class folders "
            "here (class folders: %s); check the spelling.",
            root, unknown, ", ".join(sorted(folders)[:20]),
        )
    return set(exclude) & folders


def _warn_clutter(root: Path, folders: list[str]) -> None:
    for folder in folders:
        if _CLUTTER.fullmatch(folder):
            logger.warning(
                "image_folder %s: class folder '%s' looks like a clutter/background class; "
                "add it to options.exclude if it is not a real class", root, folder,
            )


class ImageFolder(Source):
    name = "image_folder"
    any_filesystem = True  # listed through pathlib's API, which UPath gives any filesystem
    layout = (
        "  <class name>/<image files>                     (no split: a stratified split is made)\n"
        "  or train/<class name>/..., test/<class name>/..., optionally val/<class name>/..."
    )

    def is_prepared(self, root: Path, class_names: dict[str, str] | None = None,
                    exclude: list[str] | None = None) -> bool:
        return root.is_dir()

    def prepare(self, root: Path, timeout: float = 30.0,
                class_names: dict[str, str] | None = None,
                exclude: list[str] | None = None) -> None:
        if not root.is_dir():
            raise SourceError(
                f"image_folder: {root} is not a folder. Set the dataset's 'root' parameter "
                "to a folder with one sub-folder per class."
            )

    def index(self, root: Path, class_names: dict[str, str] | None = None,
              exclude: list[str] | None = None) -> pd.DataFrame:
        """One row per file in the class folders; ``exclude`` names class folders
        (under every split) to leave out, such as Caltech's BACKGROUND_Google."""
        self.prepare(root)
        class_dirs = self._class_dirs(root)
        if not class_dirs:
            raise SourceError(f"image_folder: {root} has no class sub-folders. Expected:\n{self.layout}")
        all_folders = {name for _, name in class_dirs}
        mapping = class_names or {}
        unknown = sorted(set(mapping) - all_folders)
        if unknown:
            raise SourceError(
                f"image_folder: class_names names folders {unknown} that do not exist in {root}."
            )
        excluded = _excluded(root, all_folders, exclude)
        class_dirs = {key: d for key, d in class_dirs.items() if key[1] not in excluded}
        if not class_dirs:
            raise SourceError(
                f"image_folder: options.exclude leaves no class folder in {root}; "
                "remove some names from it."
            )
        folders = sorted({name for _, name in class_dirs})
        _warn_clutter(root, folders)
        paths, labels, splits = [], [], []
        for (split, folder), directory in sorted(class_dirs.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
            files = image_files(directory)
            if not files:
                raise SourceError(
                    f"image_folder: class folder {directory} is empty. Add images to it or remove it."
                )
            for path in files:
                paths.append(path.relative_to(root).as_posix())
                labels.append(folders.index(folder))
                splits.append(split)
        names = [mapping.get(f, default_class_name(f)) for f in folders]
        return make_manifest(paths, labels, names, splits)

    def _class_dirs(self, root: Path) -> dict[tuple[str | None, str], Path]:
        """(split or None, folder name) -> class folder; warns about stray files."""
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and _visible(p))
        split_dirs = [p for p in subdirs if p.name in SPLITS]
        if split_dirs:
            if {p.name for p in split_dirs} != {p.name for p in subdirs}:
                others = sorted(p.name for p in subdirs if p.name not in SPLITS)
                raise SourceError(
                    f"image_folder: {root} mixes split folders {sorted(p.name for p in split_dirs)} "
                    f"with other folders {others}. Put every class folder under train/, val/ or test/."
                )
            class_dirs = {
                (split.name, d.name): d
                for split in split_dirs for d in split.iterdir() if d.is_dir() and _visible(d)
            }
        else:
            class_dirs = {(None, d.name): d for d in subdirs}
        stray = sorted(
            p.relative_to(root).as_posix()
            for container in (root, *split_dirs) for p in container.iterdir()
            if p.is_file() and _visible(p)
        )
        if stray:
            logger.warning(
                "image_folder %s: ignoring %d file(s) outside class folders: %s",
                root, len(stray), ", ".join(stray[:10]),
            )
        return class_dirs
