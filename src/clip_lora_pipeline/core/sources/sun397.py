"""SUN397: 397 scene categories. Official lists: Training_01 / Testing_01 (partition 1,
the one CoOp used to make its split)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clip_lora_pipeline.core.download import RemoteFile
from clip_lora_pipeline.core.manifest import make_manifest
from clip_lora_pipeline.core.sources.base import Source, SourceError, text_lines

_URL = "http://vision.princeton.edu/projects/2010/SUN/"
_IMAGES = "SUN397"


def readable_class_name(category: str) -> str:
    """CoOp's naming (datasets/sun397.py): '/a/apartment_building/outdoor' ->
    'outdoor apartment building' (the letter folder dropped, qualifiers first)."""
    parts = category.strip("/").split("/")[1:]
    return " ".join(reversed(parts)).replace("_", " ")



class SUN397(Source):
    name = "sun397"
    layout = (
        f"  {_IMAGES}/<letter>/<category>[/<qualifier>]/sun_<id>.jpg   (from SUN397.tar.gz)\n"
        f"  {_IMAGES}/ClassName.txt       (lines: /a/abbey, ...)\n"
        "  Training_01.txt, Testing_01.txt   (from Partitions.zip; lines: /a/abbey/sun_<id>.jpg)\n"
        "  split_zhou_SUN397.json            (protocol coop: CoOp's split)"
    )
    coop_protocol = True
    coop_split = RemoteFile.google_drive("1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq",
                                         "split_zhou_SUN397.json")
    image_dir = _IMAGES

    def remote_files(self) -> list[RemoteFile]:
        # md5 of the images as torchvision checks it; the partitions have none published.
        return [
            RemoteFile(_URL + "SUN397.tar.gz", "SUN397.tar.gz", _IMAGES,
                       md5="8ca2778205c41d23104230ba66911c7a", extract=True),
            RemoteFile(_URL + "download/Partitions.zip", "Partitions.zip", "Training_01.txt",
                       extract=True),
        ]

    def index(self, root: Path) -> pd.DataFrame:
        class_file = f"{_IMAGES}/ClassName.txt"
        self.require(root, class_file, "Training_01.txt", "Testing_01.txt")
        categories = text_lines(root / class_file)
        label_of = {c: i for i, c in enumerate(categories)}
        paths, labels, splits = [], [], []
        for listing, split in (("Training_01.txt", "train"), ("Testing_01.txt", "test")):
            for line in text_lines(root / listing):
                category = line.rsplit("/", 1)[0]
                if category not in label_of:
                    raise SourceError(
                        f"{root / listing}: '{line}' is in no category of {root / class_file}."
                    )
                paths.append(f"{_IMAGES}/{line.lstrip('/')}")
                labels.append(label_of[category])
                splits.append(split)
        return make_manifest(paths, labels, [readable_class_name(c) for c in categories], splits)
