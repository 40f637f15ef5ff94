"""Describable Textures (DTD): 47 textures, official train/val/test in 10 partitions."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clip_lora_pipeline.core.download import RemoteFile
from clip_lora_pipeline.core.manifest import make_manifest
from clip_lora_pipeline.core.sources.base import Source, SourceError


class DTD(Source):
    name = "dtd"
    layout = (
        "  dtd/images/<texture>/<texture>_<n>.jpg\n"
        "  dtd/labels/{train,val,test}<partition>.txt   (lines: <texture>/<file>.jpg)\n"
        "  split_zhou_DescribableTextures.json         (protocol coop: CoOp's split)"
    )
    coop_protocol = True
    coop_split = RemoteFile.google_drive("1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x",
                                         "split_zhou_DescribableTextures.json")
    image_dir = "dtd/images"

    def remote_files(self, partition: int = 1) -> list[RemoteFile]:
        return [
            RemoteFile("https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
                       "dtd-r1.0.1.tar.gz", "dtd", md5="fff73e5086ae6bdbea199a49dfb8a4c1",
                       extract=True)
        ]

    def index(self, root: Path, partition: int = 1) -> pd.DataFrame:
        if not 1 <= int(partition) <= 10:
            raise SourceError(f"dtd: partition must be 1..10, got {partition}.")
        lists = [f"dtd/labels/{split}{partition}.txt" for split in ("train", "val", "test")]
        self.require(root, "dtd/images", *lists)
        class_names = sorted(p.name for p in (root / "dtd/images").iterdir() if p.is_dir())
        label_of = {name: i for i, name in enumerate(class_names)}
        paths, labels, splits = [], [], []
        for split, listing in zip(("train", "val", "test"), lists):
            for line in (root / listing).read_text().split():
                texture = line.split("/")[0]
                if texture not in label_of:
                    raise SourceError(f"{root / listing}: '{line}' names no folder in dtd/images.")
                paths.append(f"dtd/images/{line}")
                labels.append(label_of[texture])
                splits.append(split)
        return make_manifest(paths, labels, class_names, splits)
