"""Imagenette: 10 easy ImageNet classes. Its 'val' folder is the held-out evaluation set."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clip_lora_pipeline.core.download import RemoteFile
from clip_lora_pipeline.core.manifest import make_manifest
from clip_lora_pipeline.core.sources.base import Source, SourceError

WNID_TO_NAME = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}
_ARCHIVES = {
    "full": ("imagenette2", "fe2fc210e6bb7c5664d602c3cd71e612"),
    "320px": ("imagenette2-320", "3df6f0d01a2c9592104656642f5e78a3"),
    "160px": ("imagenette2-160", "e793b78cc4c9e9a4ccc0c1155377a412"),
}


def _folder(size: str) -> tuple[str, str]:
    if size not in _ARCHIVES:
        raise SourceError(f"imagenette: size must be one of {sorted(_ARCHIVES)}, got {size!r}.")
    return _ARCHIVES[size]


class Imagenette(Source):
    name = "imagenette"
    layout = "  imagenette2[-320|-160]/{train,val}/<wnid>/*.JPEG"

    def remote_files(self, size: str = "320px") -> list[RemoteFile]:
        folder, md5 = _folder(size)
        return [
            RemoteFile(f"https://s3.amazonaws.com/fast-ai-imageclas/{folder}.tgz",
                       f"{folder}.tgz", folder, md5=md5, extract=True)
        ]

    def index(self, root: Path, size: str = "320px") -> pd.DataFrame:
        folder, _ = _folder(size)
        self.require(root, f"{folder}/train", f"{folder}/val")
        wnids = sorted(WNID_TO_NAME)
        paths, labels, splits = [], [], []
        # Imagenette's 'val' is its test set; our val is carved from train.
        for sub, split in (("train", "train"), ("val", "test")):
            for label, wnid in enumerate(wnids):
                for image in sorted((root / folder / sub / wnid).glob("*.JPEG")):
                    paths.append(image.relative_to(root).as_posix())
                    labels.append(label)
                    splits.append(split)
        return make_manifest(paths, labels, [WNID_TO_NAME[w] for w in wnids], splits)
