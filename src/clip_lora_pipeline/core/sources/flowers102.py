"""Oxford 102 Flowers, with its official train / val / test split (setid.mat)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.io import loadmat

from clip_lora_pipeline.core.download import RemoteFile
from clip_lora_pipeline.core.manifest import make_manifest
from clip_lora_pipeline.core.sources.base import Source, SourceError
from clip_lora_pipeline.core.sources.classnames import load_class_names

_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"


class Flowers102(Source):
    name = "flowers102"
    layout = (
        "  jpg/image_00001.jpg ... image_08189.jpg   (from 102flowers.tgz)\n"
        "  imagelabels.mat                          (labels, 1-based)\n"
        "  setid.mat                                (trnid, valid, tstid)\n"
        "  split_zhou_OxfordFlowers.json            (protocol coop: CoOp's split)"
    )
    coop_protocol = True
    coop_split = RemoteFile.google_drive("1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT",
                                         "split_zhou_OxfordFlowers.json")
    image_dir = "jpg"

    def remote_files(self) -> list[RemoteFile]:
        return [
            RemoteFile(_URL + "102flowers.tgz", "102flowers.tgz", "jpg",
                       md5="52808999861908f626f3c1f4e79d11fa", extract=True),
            RemoteFile(_URL + "imagelabels.mat", "imagelabels.mat", "imagelabels.mat",
                       md5="e0620be6f572b9609742df49c70aed4d"),
            RemoteFile(_URL + "setid.mat", "setid.mat", "setid.mat",
                       md5="a5357ecc9cb78c4bef273ce3793fc85c"),
        ]

    def index(self, root: Path) -> pd.DataFrame:
        self.require(root, "jpg", "imagelabels.mat", "setid.mat")
        labels = np.asarray(loadmat(root / "imagelabels.mat")["labels"]).ravel()
        setid = loadmat(root / "setid.mat")
        class_names = load_class_names("flowers102")
        if labels.min() < 1 or labels.max() > len(class_names):
            raise SourceError(
                f"{root / 'imagelabels.mat'}: labels span {labels.min()}..{labels.max()}, "
                f"expected 1..{len(class_names)}."
            )
        paths, targets, splits = [], [], []
        for key, split in (("trnid", "train"), ("valid", "val"), ("tstid", "test")):
            for image_id in np.asarray(setid[key]).ravel():
                if not 1 <= image_id <= len(labels):
                    raise SourceError(
                        f"{root / 'setid.mat'}: image id {image_id} in '{key}' has no label."
                    )
                paths.append(f"jpg/image_{int(image_id):05d}.jpg")
                targets.append(int(labels[image_id - 1]) - 1)
                splits.append(split)
        return make_manifest(paths, targets, class_names, splits)
