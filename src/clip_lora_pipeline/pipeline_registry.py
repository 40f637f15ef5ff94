"""Project pipelines."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from clip_lora_pipeline import project_config
from clip_lora_pipeline.pipelines import data


def register_pipelines() -> dict[str, Pipeline]:
    """One namespace per configured dataset, e.g. ``flowers102.split``."""
    names = project_config.dataset_names()
    data_pipeline = sum((data.pipeline.for_dataset(name) for name in names), Pipeline([]))
    return {"__default__": data_pipeline, "data": data_pipeline}
