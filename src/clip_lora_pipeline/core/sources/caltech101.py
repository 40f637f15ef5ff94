"""Caltech-101 as in CoOp / CLIP-LoRA: 100 object classes, no official split."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from clip_lora_pipeline.core.download import RemoteFile, extract_archive, fetch
from clip_lora_pipeline.core.manifest import make_manifest
from clip_lora_pipeline.core.sources.base import Source

# As CoOp (datasets/caltech101.py): the background class and the cropped duplicate of
# the faces class (Faces_easy) are dropped; Faces is the class "face".
EXCLUDED = {"BACKGROUND_Google", "Faces_easy"}
RENAMED = {
    "airplanes": "airplane",
    "Faces": "face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
}
_IMAGES = "101_ObjectCategories"


def readable_class_name(folder: str) -> str:
    return RENAMED.get(folder, folder).replace("_", " ")


class Caltech101(Source):
    name = "caltech101"
    layout = (
        f"  {_IMAGES}/<class>/image_<n>.jpg\n"
        "  split_zhou_Caltech101.json   (protocol coop: CoOp's split)"
    )
    coop_protocol = True
    coop_split = RemoteFile.google_drive("1hyarUivQE36mY6jSomru6Fjd-JzwcCzN",
                                         "split_zhou_Caltech101.json")
    image_dir = _IMAGES

    def remote_files(self) -> list[RemoteFile]:
        # The zip holds 101_ObjectCategories.tar.gz, which prepare() unpacks in turn.
        return [
            RemoteFile("https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",
                       "caltech-101.zip", "caltech-101",
                       md5="3138e1922a9193bfa496528edbbc45d0", extract=True)
        ]

    def is_prepared(self, root: Path) -> bool:
        return (root / _IMAGES).is_dir()

    def prepare(self, root: Path, timeout: float = 30.0) -> None:
        if self.is_prepared(root):
            return
        fetch(self.remote_files(), root, timeout=timeout)
        inner = root / "caltech-101" / f"{_IMAGES}.tar.gz"
        self.require(root, inner.relative_to(root).as_posix())
        extract_archive(inner, root)
        shutil.rmtree(root / "caltech-101")

    def index(self, root: Path) -> pd.DataFrame:
        self.require(root, _IMAGES)
        folders = sorted(
            p.name for p in (root / _IMAGES).iterdir() if p.is_dir() and p.name not in EXCLUDED
        )
        paths, labels = [], []
        for label, folder in enumerate(folders):
            for image in sorted((root / _IMAGES / folder).glob("*.jpg")):
                paths.append(image.relative_to(root).as_posix())
                labels.append(label)
        return make_manifest(paths, labels, [readable_class_name(f) for f in folders])
