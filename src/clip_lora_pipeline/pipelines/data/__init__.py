"""Download, validate, split and few-shot sample one dataset (run once per namespace)."""

from clip_lora_pipeline.pipelines.data.pipeline import create_pipeline

__all__ = ["create_pipeline"]
