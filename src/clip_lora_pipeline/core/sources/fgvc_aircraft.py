"""FGVC-Aircraft 2013b: 100 aircraft variants with official train / val / test lists,
which CoOp uses as they are (no split file)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clip_lora_pipeline.core.download import RemoteFile
from clip_lora_pipeline.core.manifest import make_manifest
from clip_lora_pipeline.core.sources.base import Source, SourceError, text_lines

_DATA = "fgvc-aircraft-2013b/data"



class FGVCAircraft(Source):
    name = "fgvc_aircraft"
    layout = (
        f"  {_DATA}/images/<id>.jpg\n"
        f"  {_DATA}/variants.txt                        (one variant name a line)\n"
        f"  {_DATA}/images_variant_{{train,val,test}}.txt  (lines: <id> <variant name>)"
    )
    coop_protocol = True
    image_dir = f"{_DATA}/images"

    def remote_files(self) -> list[RemoteFile]:
        return [
            RemoteFile("https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/"
                       "fgvc-aircraft-2013b.tar.gz", "fgvc-aircraft-2013b.tar.gz",
                       "fgvc-aircraft-2013b", md5="d4acdd33327262359767eeaa97a4f732",
                       extract=True)
        ]

    def index(self, root: Path) -> pd.DataFrame:
        lists = {s: f"{_DATA}/images_variant_{s}.txt" for s in ("train", "val", "test")}
        self.require(root, f"{_DATA}/images", f"{_DATA}/variants.txt", *lists.values())
        variants = text_lines(root / _DATA / "variants.txt")
        label_of = {v: i for i, v in enumerate(variants)}
        paths, labels, splits = [], [], []
        for split, listing in lists.items():
            for line in text_lines(root / listing):
                image_id, _, variant = line.partition(" ")
                if variant not in label_of:
                    raise SourceError(
                        f"{root / listing}: '{line}' names no variant of {_DATA}/variants.txt."
                    )
                paths.append(f"{self.image_dir}/{image_id}.jpg")
                labels.append(label_of[variant])
                splits.append(split)
        # Variant names are CoOp's class names as they are ("707-320", "F/A-18").
        return make_manifest(paths, labels, variants, splits)
