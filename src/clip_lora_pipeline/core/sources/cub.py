"""CUB-200-2011: 200 bird species, official split in train_test_split.txt."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from clip_lora_pipeline.core.download import RemoteFile
from clip_lora_pipeline.core.manifest import make_manifest
from clip_lora_pipeline.core.sources.base import Source, SourceError

_BASE = "CUB_200_2011"


def _read_pairs(path: Path) -> dict[int, str]:
    pairs = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if not key.isdigit() or not value:
            raise SourceError(f"{path}, line {number}: expected '<id> <value>', got {line!r}.")
        pairs[int(key)] = value.strip()
    return pairs


def readable_class_name(folder: str) -> str:
    # "001.Black_footed_Albatross" -> "Black footed Albatross"
    return re.sub(r"^\d+\.", "", folder).replace("_", " ")


class CUB200(Source):
    name = "cub200"
    layout = (
        f"  {_BASE}/images/<nnn.Class_Name>/<file>.jpg\n"
        f"  {_BASE}/images.txt, image_class_labels.txt, train_test_split.txt, classes.txt"
    )

    def remote_files(self) -> list[RemoteFile]:
        return [
            RemoteFile("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                       "CUB_200_2011.tgz", _BASE, md5="97eceeb196236b17998738112f37df78",
                       extract=True)
        ]

    def index(self, root: Path) -> pd.DataFrame:
        files = ["images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"]
        self.require(root, f"{_BASE}/images", *(f"{_BASE}/{f}" for f in files))
        images, class_of, is_train, classes = (_read_pairs(root / _BASE / f) for f in files)
        if sorted(classes) != list(range(1, len(classes) + 1)):
            raise SourceError(f"{root / _BASE / 'classes.txt'}: class ids are not 1..{len(classes)}.")
        missing = sorted(set(images) - set(class_of) | set(images) - set(is_train))
        if missing:
            raise SourceError(
                f"{root / _BASE}: image ids {missing[:5]} have no label or no split entry."
            )
        ids = sorted(images)
        return make_manifest(
            [f"{_BASE}/images/{images[i]}" for i in ids],
            [int(class_of[i]) - 1 for i in ids],
            [readable_class_name(classes[c]) for c in sorted(classes)],
            ["train" if is_train[i] == "1" else "test" for i in ids],
        )
