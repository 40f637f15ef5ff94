"""A thin wrapper over ``core.generate``: make the generated images of a few-shot
sample's training images, and list every image of the dataset's folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from clip_lora_pipeline.core.generate import (
    GenerateSettings,
    check_folder,
    generate,
    jobs_for,
    list_generated,
    load_img2img,
)
from clip_lora_pipeline.core.runtime import resolve_device, resolve_precision


def generate_images(train: pd.DataFrame, dataset: dict[str, Any], augment: dict[str, Any],
                    runtime: dict[str, Any], name: str) -> pd.DataFrame:
    """Generate the missing images for ``train``'s images (dataset ``name``) under
    ``<augment.output_dir>/<name>``; returns the manifest of every image there, each
    cell's included (training picks its own sources from it)."""
    settings = GenerateSettings.from_params(augment)
    folder = Path(settings.output_dir) / name
    jobs = jobs_for(zip(train["path"], train["class_name"]), settings)
    check_folder(folder, settings)
    if any(not (folder / job.path).is_file() for job in jobs):  # no model load for none
        device = resolve_device(runtime.get("device", "auto"))
        pipe = load_img2img(settings.model_path, device,
                            resolve_precision(device, runtime.get("precision", "auto")))
        generate(pipe, jobs, Path(dataset["root"]), folder, settings)
    return list_generated(folder)
