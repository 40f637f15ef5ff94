"""Food-101: 101 dishes, official train / test lists in meta/*.json."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from clip_lora_pipeline.core.download import RemoteFile
from clip_lora_pipeline.core.manifest import make_manifest
from clip_lora_pipeline.core.sources.base import Source, SourceError


class Food101(Source):
    name = "food101"
    layout = (
        "  food-101/images/<class>/<id>.jpg\n"
        "  food-101/meta/classes.txt, train.json, test.json\n"
        "  split_zhou_Food101.json   (protocol coop: CoOp's split)"
    )
    coop_protocol = True
    coop_split = RemoteFile.google_drive("1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl",
                                         "split_zhou_Food101.json")
    image_dir = "food-101/images"

    def remote_files(self) -> list[RemoteFile]:
        return [
            RemoteFile("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz", "food-101.tar.gz",
                       "food-101", md5="85eeb15f3717b99a5da872d97d918f87", extract=True)
        ]

    def index(self, root: Path) -> pd.DataFrame:
        meta = root / "food-101" / "meta"
        self.require(root, "food-101/images", "food-101/meta/classes.txt",
                     "food-101/meta/train.json", "food-101/meta/test.json")
        classes = (meta / "classes.txt").read_text().split()
        label_of = {c: i for i, c in enumerate(classes)}
        paths, labels, splits = [], [], []
        for split in ("train", "test"):
            listing = json.loads((meta / f"{split}.json").read_text())
            for cls, items in sorted(listing.items()):
                if cls not in label_of:
                    raise SourceError(f"{meta / f'{split}.json'}: class '{cls}' is not in classes.txt.")
                for item in items:
                    paths.append(f"food-101/images/{item}.jpg")
                    labels.append(label_of[cls])
                    splits.append(split)
        return make_manifest(paths, labels, [c.replace("_", " ") for c in classes], splits)
