"""Oxford-IIIT Pet: 37 breeds, official trainval / test lists."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clip_lora_pipeline.core.download import RemoteFile
from clip_lora_pipeline.core.manifest import make_manifest
from clip_lora_pipeline.core.sources.base import Source, SourceError

_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/"


class OxfordPets(Source):
    name = "oxford_pets"
    layout = (
        "  images/<Breed_Name>_<n>.jpg\n"
        "  annotations/{trainval,test}.txt   (lines: <image id> <class id> <species> <breed id>)\n"
        "  split_zhou_OxfordPets.json        (protocol coop: CoOp's split)"
    )
    coop_protocol = True
    coop_split = RemoteFile.google_drive("1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs",
                                         "split_zhou_OxfordPets.json")
    image_dir = "images"

    def remote_files(self) -> list[RemoteFile]:
        return [
            RemoteFile(_URL + "images.tar.gz", "images.tar.gz", "images",
                       md5="5c4f3ee8e5d25df40f4fd59a7f44e54c", extract=True),
            RemoteFile(_URL + "annotations.tar.gz", "annotations.tar.gz", "annotations",
                       md5="95a8c909bbe2e81eed6a22bccdf3f68f", extract=True),
        ]

    def index(self, root: Path) -> pd.DataFrame:
        self.require(root, "images", "annotations/trainval.txt", "annotations/test.txt")
        rows = []
        for listing, split in (("trainval.txt", "train"), ("test.txt", "test")):
            for line in (root / "annotations" / listing).read_text().splitlines():
                if not line.strip() or line.startswith("#"):
                    continue
                image_id, class_id, *_ = line.split()
                rows.append((image_id, int(class_id) - 1, split))
        names: dict[int, str] = {}
        for image_id, label, _ in rows:
            # "american_pit_bull_terrier_12" -> "american pit bull terrier"
            name = " ".join(image_id.split("_")[:-1]).lower()
            if names.setdefault(label, name) != name:
                raise SourceError(
                    f"{root / 'annotations'}: class id {label + 1} is both "
                    f"'{names[label]}' and '{name}'."
                )
        if sorted(names) != list(range(len(names))):
            raise SourceError(f"{root / 'annotations'}: class ids are not 1..{len(names)}.")
        return make_manifest(
            [f"images/{image_id}.jpg" for image_id, _, _ in rows],
            [label for _, label, _ in rows],
            [names[i] for i in range(len(names))],
            [split for _, _, split in rows],
        )
