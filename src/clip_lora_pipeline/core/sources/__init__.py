"""Data sources by name. Each turns files on disk into the same manifest table."""

from __future__ import annotations

from difflib import get_close_matches

from clip_lora_pipeline.core.sources.base import Source, SourceError
from clip_lora_pipeline.core.sources.caltech101 import Caltech101
from clip_lora_pipeline.core.sources.circuits import Circuits
from clip_lora_pipeline.core.sources.cub import CUB200
from clip_lora_pipeline.core.sources.dtd import DTD
from clip_lora_pipeline.core.sources.eurosat import EuroSAT
from clip_lora_pipeline.core.sources.fgvc_aircraft import FGVCAircraft
from clip_lora_pipeline.core.sources.flowers102 import Flowers102
from clip_lora_pipeline.core.sources.food101 import Food101
from clip_lora_pipeline.core.sources.image_folder import ImageFolder
from clip_lora_pipeline.core.sources.imagenet import ImageNet
from clip_lora_pipeline.core.sources.imagenette import Imagenette
from clip_lora_pipeline.core.sources.oxford_pets import OxfordPets
from clip_lora_pipeline.core.sources.stanford_cars import StanfordCars
from clip_lora_pipeline.core.sources.sun397 import SUN397
from clip_lora_pipeline.core.sources.synthetic import Synthetic
from clip_lora_pipeline.core.sources.ucf101 import UCF101

SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        Flowers102(), EuroSAT(), DTD(), OxfordPets(), Caltech101(), Food101(), ImageNet(),
        SUN397(), StanfordCars(), FGVCAircraft(), UCF101(), Imagenette(), CUB200(),
        ImageFolder(), Synthetic(), Circuits(),
    )
}


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        close = get_close_matches(name, SOURCES, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise SourceError(
            f"Unknown data source {name!r}.{hint} Known sources: {sorted(SOURCES)}."
        ) from None


__all__ = ["SOURCES", "Source", "SourceError", "get_source"]
