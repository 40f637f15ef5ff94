"""ImageNet (ILSVRC-2012), laid out as CoOp expects; its images are placed by hand.

The licence forbids redistributing the images, so nothing but CoOp's classnames.txt is
downloaded. As in CoOp and CLIP-LoRA, the 50,000 validation images are the test set;
few-shot val is carved from train by the split step (CLIP-LoRA draws its val shots from
train too; CoOp validates on test, which this pipeline never does).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pandas as pd

from clip_lora_pipeline.core.download import RemoteFile, fetch
from clip_lora_pipeline.core.manifest import make_manifest
from clip_lora_pipeline.core.sources.base import Source, SourceError

logger = logging.getLogger(__name__)

_CLASSNAMES = "classnames.txt"
# CoOp's DATASETS.md: class names copied from CLIP's prompt-engineering notebook.
_CLASSNAMES_FILE = RemoteFile.google_drive("1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF", _CLASSNAMES)


def read_classnames(path: Path) -> dict[str, str]:
    """wnid -> class name from lines '<wnid> <class name>'; duplicated names (CLIP's
    list has two 'sunglasses' and two 'missile') get their wnid appended, since a
    manifest's class names must tell classes apart."""
    names = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        wnid, _, name = line.strip().partition(" ")
        if not name.strip():
            raise SourceError(f"{path}, line {number}: expected '<wnid> <class name>', got {line!r}.")
        names[wnid] = name.strip()
    repeated = {n for n, count in Counter(names.values()).items() if count > 1}
    if repeated:
        logger.warning("%s: class names %s are shared by several wnids; each gets its wnid "
                       "appended.", path, sorted(repeated))
    return {w: f"{n} ({w})" if n in repeated else n for w, n in names.items()}


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


class ImageNet(Source):
    name = "imagenet"
    layout = (
        "  images/train/<wnid>/*.JPEG   (1,000 class folders, e.g. n01440764)\n"
        "  images/val/<wnid>/*.JPEG     (the 50,000 validation images, sorted into the same\n"
        "                                class folders)\n"
        "  classnames.txt               (CoOp's: lines '<wnid> <class name>'; downloaded)"
    )
    coop_protocol = True
    image_dir = "images"

    def remote_files(self) -> list[RemoteFile]:
        return [_CLASSNAMES_FILE]

    def is_prepared(self, root: Path) -> bool:
        return all((root / p).exists() for p in ("images/train", "images/val", _CLASSNAMES))

    def prepare(self, root: Path, timeout: float = 30.0) -> None:
        missing = [p for p in ("images/train", "images/val") if not (root / p).is_dir()]
        if missing:
            raise SourceError(
                f"imagenet: {[str(root / m) for m in missing]} not found. ImageNet's licence "
                "forbids redistribution, so it is not downloaded: get ILSVRC2012 train and "
                "val from https://image-net.org (free account), unpack "
                f"train into {root / 'images/train'}/<wnid>/ and val, sorted into the same "
                f"class folders, into {root / 'images/val'}/<wnid>/ (or link existing "
                f"copies there). CoOp's {_CLASSNAMES} ({_CLASSNAMES_FILE.url}) is fetched "
                f"into {root}. Expected layout under {root}:\n{self.layout}"
            )
        fetch(self.remote_files(), root, timeout=timeout)

    def index(self, root: Path) -> pd.DataFrame:
        self.require(root, "images/train", "images/val", _CLASSNAMES)
        names = read_classnames(root / _CLASSNAMES)
        wnids = [p.name for p in _class_folders(root / "images/train")]
        unnamed = [w for w in wnids if w not in names]
        if unnamed:
            raise SourceError(
                f"imagenet: class folders {unnamed[:5]} have no line in {root / _CLASSNAMES}."
            )
        if not _class_folders(root / "images/val"):
            raise SourceError(
                f"imagenet: {root / 'images/val'} has no class folders. ILSVRC2012's val "
                "archive is flat; sort its images into <wnid>/ folders (as CoOp expects)."
            )
        label_of = {w: i for i, w in enumerate(wnids)}
        paths, labels, splits = [], [], []
        for sub, split in (("train", "train"), ("val", "test")):
            for folder in _class_folders(root / "images" / sub):
                if folder.name not in label_of:
                    raise SourceError(
                        f"imagenet: {folder} is not a class of images/train; val must use "
                        "the train folders' wnids."
                    )
                for image in sorted(folder.iterdir()):
                    if image.is_file() and not image.name.startswith("."):
                        paths.append(f"images/{sub}/{folder.name}/{image.name}")
                        labels.append(label_of[folder.name])
                        splits.append(split)
        return make_manifest(paths, labels, [names[w] for w in wnids], splits)
