"""Circuit diagrams of the low-resource benchmark (Zhang, Doughty & Snoek, "Low-Resource
Vision Challenges for Foundation Models", CVPR 2024), with the benchmark's own splits.

The layout is the one the paper's code reads (github.com/xiaobai1217/Low-Resource-Vision):
scripts/dataloader_circuit.py, zero-shot/circuit.py and linear_probe/circuit.py read
``circuits/{train,val,test}_5_shots.csv`` (rows ``<id>,<image path>,<label>``, images
under ``circuits/data/``) and ``circuits/label_map.csv`` (rows ``<label>,<class name>``),
with no header row; img2img_circuit.py reads the same columns from
``circuit-diagrams/train.csv`` and ``label_map.csv`` after a header row. Which naming
the figshare record ships could not be checked (figshare was unreachable when this was
written), so both are read.

The benchmark's historic maps and mechanical drawings are retrieval tasks (pairs of
images without class labels: dataloader_maps.py, dataloader_mechanical.py), so they are
not classification sources.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path, PurePosixPath

import pandas as pd

from clip_lora_pipeline.core import figshare
from clip_lora_pipeline.core.download import (
    DownloadError,
    RemoteFile,
    download_file,
    extract_archive,
)
from clip_lora_pipeline.core.manifest import SPLITS, make_manifest
from clip_lora_pipeline.core.sources.base import Source, SourceError

logger = logging.getLogger(__name__)

ARTICLE_ID = 25577145
RECORD_PAGE = ("https://uvaauas.figshare.com/articles/dataset/"
               "Low-Resource_Image_Transfer_Evaluation_Benchmark/25577145")
# The dataloaders' folder name first, then img2img_circuit.py's.
FOLDERS = ("circuits", "circuit-diagrams")
LABEL_MAP = "label_map.csv"
SPLIT_FILES = ("{}_5_shots.csv", "{}.csv")


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def read_rows(path: Path, columns: int, label_column: int) -> list[tuple[int, list[str]]]:
    """(line number, cells) of one of the benchmark's CSV lists. A first row whose label
    cell is not a number is a header (img2img_circuit.py's files have one)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [(number, [cell.strip() for cell in row])
                for number, row in enumerate(csv.reader(handle), start=1)
                if any(cell.strip() for cell in row)]
    if rows and len(rows[0][1]) >= columns and not _is_int(rows[0][1][label_column]):
        rows = rows[1:]
    for number, row in rows:
        if len(row) < columns or not _is_int(row[label_column]):
            raise SourceError(
                f"{path}, line {number}: expected {columns} comma-separated columns with an "
                f"integer label in column {label_column % columns + 1}, got {row!r}."
            )
    return rows


def read_label_map(path: Path) -> tuple[list[int], list[str]]:
    """Labels in ascending order and their class names (underscores read as spaces, as
    the prompts are sentences)."""
    pairs = sorted((int(row[0]), row[1].replace("_", " ").strip())
                   for _, row in read_rows(path, 2, 0))
    if not pairs:
        raise SourceError(f"{path} lists no classes; expected rows '<label>,<class name>'.")
    labels = [label for label, _ in pairs]
    if len(set(labels)) != len(labels):
        raise SourceError(f"{path}: a label is listed twice: {sorted(labels)}.")
    return labels, [name for _, name in pairs]


def dataset_folder(root: Path) -> Path | None:
    """The folder holding label_map.csv: root/circuits (or circuit-diagrams), the same
    one level down (an archive's top folder), or root itself."""
    candidates = [
        *(root / folder for folder in FOLDERS),
        *(match for folder in FOLDERS for match in sorted(root.glob(f"*/{folder}"))),
        root,
    ]
    return next((c for c in candidates if (c / LABEL_MAP).is_file()), None)


def split_file(folder: Path, split: str) -> Path | None:
    paths = (folder / pattern.format(split) for pattern in SPLIT_FILES)
    return next((path for path in paths if path.is_file()), None)


def _safe_relative(listing: Path, number: int, image: str) -> PurePosixPath:
    relative = PurePosixPath(image)
    if not image or relative.is_absolute() or ".." in relative.parts:
        raise SourceError(f"{listing}, line {number}: image path {image!r} must be relative "
                          "and stay inside the dataset folder.")
    return relative


def _image_base(root: Path, folder: Path, listing: Path, first: PurePosixPath) -> Path:
    """Where the lists' image paths start: circuits/data/ in the dataloaders; the list's
    own folder or the root where a copy has no data/ folder."""
    candidates = [folder / "data", folder, root]
    for base in candidates:
        if (base / first).is_file():
            return base
    raise SourceError(
        f"circuits: {first} (the first image {listing} lists) is in none of "
        f"{[str(c) for c in candidates]}. Unpack the images so that the lists' paths start "
        f"at {folder / 'data'}."
    )


def _circuits_file(files: list[RemoteFile]) -> RemoteFile:
    named = [f for f in files if "circuit" in f.filename.lower()]
    if len(named) == 1:
        return named[0]
    if not named and len(files) == 1:  # the whole benchmark as one archive
        return files[0]
    raise DownloadError(
        f"figshare record {ARTICLE_ID} lists {[f.filename for f in files]}; expected one "
        "file named like 'circuits'."
    )


class Circuits(Source):
    name = "circuits"
    layout = (
        "  circuits/label_map.csv                 (rows '<label>,<class name>')\n"
        "  circuits/{train,val,test}_5_shots.csv  (rows '<id>,<image path>,<label>'; without\n"
        "                                          val, val is carved from train)\n"
        "  circuits/data/<image path>             (the images the lists name)\n"
        "  (also read: circuit-diagrams/ with {train,val,test}.csv, header rows allowed;\n"
        "   either folder one level down, or these files directly in the root)"
    )
    # Where the file listing comes from; tests point it at a loopback server.
    figshare_api = figshare.API

    def is_prepared(self, root: Path) -> bool:
        folder = dataset_folder(root) if root.is_dir() else None
        return folder is not None and all(split_file(folder, s) for s in ("train", "test"))

    def prepare(self, root: Path, timeout: float = 30.0) -> None:
        """List the figshare record's files, download the circuits archive (checked
        against figshare's md5) and unpack it into ``root``."""
        if self.is_prepared(root):
            return
        try:
            remote = _circuits_file(figshare.article_files(ARTICLE_ID, timeout, self.figshare_api))
            path = download_file(remote, root, timeout=timeout)
        except DownloadError as exc:
            raise DownloadError(f"circuits: {exc} {self.placement_advice(root)}") from exc
        if remote.extract:
            logger.info("Unpacking %s", path)
            extract_archive(path, root)
            path.unlink()
        if not self.is_prepared(root):
            raise SourceError(
                f"circuits: {remote.filename} from figshare record {ARTICLE_ID} is in {root}, "
                f"but {LABEL_MAP} with train and test lists is not where expected. Move the "
                f"files into this layout under {root}:\n{self.layout}"
            )

    def placement_advice(self, root: Path) -> str:
        return (
            f"Without network access, download the benchmark from {RECORD_PAGE} on another "
            f"machine and unpack its circuit diagrams into {root}, so that "
            f"{root / 'circuits' / LABEL_MAP} and {root / 'circuits/train_5_shots.csv'} "
            f"exist, then re-run. Expected layout under {root}:\n{self.layout}"
        )

    def index(self, root: Path) -> pd.DataFrame:
        folder = dataset_folder(root) if root.is_dir() else None
        lists = {split: split_file(folder, split) for split in SPLITS} if folder else {}
        missing = [s for s in ("train", "test") if lists.get(s) is None]
        if folder is None or missing:
            where = folder or root / "circuits"
            wanted = [LABEL_MAP] if folder is None else [f"{s}_5_shots.csv" for s in missing]
            raise SourceError(
                f"circuits: {[str(where / w) for w in wanted]} not found. "
                f"Expected layout under {root}:\n{self.layout}"
            )
        if lists["val"] is None:
            logger.info("circuits: no val list in %s; val is carved from train.", folder)
        label_ids, class_names = read_label_map(folder / LABEL_MAP)
        label_of = {label: i for i, label in enumerate(label_ids)}
        entries = [(split, listing, number, row)
                   for split, listing in lists.items() if listing is not None
                   for number, row in read_rows(listing, 3, -1)]
        if not entries:
            raise SourceError(f"circuits: the lists in {folder} name no images.")
        _, listing, number, row = entries[0]
        base = _image_base(root, folder, listing, _safe_relative(listing, number, row[1]))
        paths, labels, splits, seen = [], [], [], {}
        for split, listing, number, row in entries:
            label = int(row[-1])
            if label not in label_of:
                raise SourceError(f"{listing}, line {number}: label {label} is not in "
                                  f"{folder / LABEL_MAP} (labels {label_ids[0]}..{label_ids[-1]}).")
            path = (base / _safe_relative(listing, number, row[1])).relative_to(root).as_posix()
            if path in seen:
                raise SourceError(f"{listing}, line {number}: {row[1]} is listed again "
                                  f"(first in {seen[path]}).")
            seen[path] = listing.name
            paths.append(path)
            labels.append(label_of[label])
            splits.append(split)
        return make_manifest(paths, labels, class_names, splits)
