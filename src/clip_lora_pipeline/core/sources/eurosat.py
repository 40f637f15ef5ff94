"""EuroSAT RGB: 27,000 Sentinel-2 patches in 10 land-use classes, no official split."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clip_lora_pipeline.core.download import RemoteFile
from clip_lora_pipeline.core.manifest import make_manifest
from clip_lora_pipeline.core.sources.base import Source, SourceError

# CoOp's names for the folder codes (datasets/eurosat.py NEW_CNAMES), the ones in its
# split file, so both protocols prompt with the same words.
CLASS_NAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


class EuroSAT(Source):
    name = "eurosat"
    layout = (
        "  2750/<ClassCode>/<ClassCode>_<n>.jpg   (from EuroSAT.zip)\n"
        "  split_zhou_EuroSAT.json                (protocol coop: CoOp's split)"
    )
    coop_protocol = True
    coop_split = RemoteFile.google_drive("1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o",
                                         "split_zhou_EuroSAT.json")
    image_dir = "2750"

    def remote_files(self) -> list[RemoteFile]:
        return [
            RemoteFile(
                "https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
                "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
                "EuroSAT.zip", "2750", md5="c8fa014336c82ac7804f0398fcb19387", extract=True,
            )
        ]

    def index(self, root: Path) -> pd.DataFrame:
        self.require(root, "2750")
        folders = sorted(p.name for p in (root / "2750").iterdir() if p.is_dir())
        unknown = sorted(set(folders) - set(CLASS_NAMES))
        if unknown:
            raise SourceError(
                f"{root / '2750'}: unexpected class folders {unknown}; "
                f"EuroSAT has {sorted(CLASS_NAMES)}."
            )
        codes = sorted(CLASS_NAMES)
        paths, labels = [], []
        for label, code in enumerate(codes):
            for image in sorted((root / "2750" / code).glob("*.jpg")):
                paths.append(image.relative_to(root).as_posix())
                labels.append(label)
        return make_manifest(paths, labels, [CLASS_NAMES[c] for c in codes])
