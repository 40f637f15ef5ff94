"""Stanford Cars: 196 car models. Its publisher no longer serves the files, so the
images are placed by hand; CoOp's split file is still fetched from Google Drive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.io import loadmat

from clip_lora_pipeline.core.download import RemoteFile
from clip_lora_pipeline.core.manifest import make_manifest
from clip_lora_pipeline.core.sources.base import Source, SourceError

_TRAIN_ANNOS = "devkit/cars_train_annos.mat"
_TEST_ANNOS = "cars_test_annos_withlabels.mat"
_META = "devkit/cars_meta.mat"


def readable_class_name(name: str) -> str:
    """CoOp's naming (datasets/stanford_cars.py): the year first,
    'AM General Hummer SUV 2000' -> '2000 AM General Hummer SUV'."""
    *model, year = name.split(" ")
    return " ".join([year, *model])


def _annotations(path: Path) -> list[tuple[str, int]]:
    """(file name, 1-based class) per image of a cars_*_annos.mat file."""
    try:
        annos = np.asarray(loadmat(path)["annotations"]).ravel()
        return [(str(np.ravel(a["fname"])[0]), int(np.ravel(a["class"])[0])) for a in annos]
    except (KeyError, ValueError, IndexError) as exc:
        raise SourceError(
            f"{path}: expected an 'annotations' struct with 'fname' and 'class' ({exc})."
        ) from exc


class StanfordCars(Source):
    name = "stanford_cars"
    layout = (
        "  cars_train/<nnnnn>.jpg, cars_test/<nnnnn>.jpg\n"
        "  split_zhou_StanfordCars.json          (protocol coop: CoOp's split)\n"
        "  devkit/cars_train_annos.mat, devkit/cars_meta.mat,\n"
        "  cars_test_annos_withlabels.mat         (protocol official)"
    )
    coop_protocol = True
    coop_split = RemoteFile.google_drive("1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT",
                                         "split_zhou_StanfordCars.json")
    image_dir = ""  # CoOp's split lists cars_train/... and cars_test/... from the root

    def is_prepared(self, root: Path) -> bool:
        return (root / "cars_train").is_dir() and (root / "cars_test").is_dir()

    def prepare(self, root: Path, timeout: float = 30.0) -> None:
        if not self.is_prepared(root):
            raise SourceError(
                f"stanford_cars: {root / 'cars_train'} and {root / 'cars_test'} are needed. "
                "The publisher's links (ai.stanford.edu/~jkrause/car196/cars_train.tgz, "
                "cars_test.tgz, car_devkit.tgz, cars_test_annos_withlabels.mat) no longer "
                "serve the files, so they cannot be downloaded: copy them from a mirror you "
                f"trust and unpack them under {root}. Expected layout:\n{self.layout}"
            )

    def index(self, root: Path) -> pd.DataFrame:
        self.require(root, "cars_train", "cars_test", _TRAIN_ANNOS, _TEST_ANNOS, _META)
        names = [str(np.ravel(n)[0]) for n in np.asarray(loadmat(root / _META)["class_names"]).ravel()]
        paths, labels, splits = [], [], []
        for folder, annos, split in (("cars_train", _TRAIN_ANNOS, "train"),
                                     ("cars_test", _TEST_ANNOS, "test")):
            for fname, label in _annotations(root / annos):
                if not 1 <= label <= len(names):
                    raise SourceError(
                        f"{root / annos}: {fname} has class {label}; {_META} names 1..{len(names)}."
                    )
                paths.append(f"{folder}/{fname}")
                labels.append(label - 1)
                splits.append(split)
        return make_manifest(paths, labels, [readable_class_name(n) for n in names], splits)
