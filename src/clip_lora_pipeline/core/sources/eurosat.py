"""EuroSAT RGB: 27,000 Sentinel-2 patches in 10 land-use classes, no official split."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clip_lora_pipeline.core.download import RemoteFile
from clip_lora_pipeline.core.manifest import make_manifest
from clip_lora_pipeline.core.sources.base import Source, SourceError

# The CLIP paper's names for the folder codes.
CLASS_NAMES = {
    "AnnualCrop": "annual crop land",
    "Forest": "forest",
    "HerbaceousVegetation": "brushland or shrubland",
    "Highway": "highway or road",
    "Industrial": "industrial buildings or commercial buildings",
    "Pasture": "pasture land",
    "PermanentCrop": "permanent crop land",
    "Residential": "residential buildings or homes or apartments",
    "River": "river",
    "SeaLake": "lake or sea",
}


class EuroSAT(Source):
    name = "eurosat"
    layout = "  2750/<ClassCode>/<ClassCode>_<n>.jpg   (from EuroSAT.zip)"

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
