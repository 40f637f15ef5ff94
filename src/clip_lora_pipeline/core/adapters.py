"""A ``Trainer`` built from the pipeline's parameters, or restored from a saved adapter
(the trainable tensors plus the config they were trained with)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from clip_lora_pipeline.core.bitfit import BitFitSettings
from clip_lora_pipeline.core.lora import LoraSettings
from clip_lora_pipeline.core.model_id import ModelSpec
from clip_lora_pipeline.core.models import LoadedModel, load_model
from clip_lora_pipeline.core.runtime import resolve_device, resolve_precision
from clip_lora_pipeline.core.train import Trainer, TrainSettings


def method_settings(method: dict[str, Any]) -> tuple[TrainSettings, LoraSettings, BitFitSettings]:
    """An ``adaptation_methods`` entry split into training, LoRA and BitFit settings."""
    values = dict(method)
    lora = LoraSettings.from_params(values.pop("lora", None) or {})
    bitfit = BitFitSettings(**(values.pop("bitfit", None) or {}))
    return TrainSettings.from_params(values), lora, bitfit


def build_trainer(
    model_params: dict[str, Any], runtime: dict[str, Any], class_names: list[str],
    method: dict[str, Any], seed: int,
) -> tuple[Trainer, LoadedModel]:
    """A trainer on a freshly loaded model (training changes the model in place).

    ``seed``: the few-shot seed; it seeds training too unless the method sets its own
    ``seed`` (CLIP-LoRA draws the sample and trains from one seed).
    """
    device = resolve_device(runtime.get("device", "auto"))
    loaded = load_model(ModelSpec.from_params(model_params), device)
    settings, lora, bitfit = method_settings(method)
    if settings.seed is None:
        settings = replace(settings, seed=seed)
    cfg = loaded.model.visual.preprocess_cfg
    trainer = Trainer(
        loaded.model, loaded.tokenizer, class_names, settings, device,
        resolve_precision(device, runtime.get("precision", "auto")),
        lora=lora, bitfit=bitfit, image_size=cfg["size"][0], mean=cfg["mean"], std=cfg["std"],
    )
    return trainer, loaded


def restore_trainer(
    adapter: dict[str, Any], model_params: dict[str, Any], runtime: dict[str, Any]
) -> tuple[Trainer, LoadedModel]:
    """The trainer as it ended training: same model, method and classes, trained tensors
    copied in. Refuses an adapter trained on another model."""
    config = adapter["config"]
    if config["model"] != model_params:
        raise ValueError(
            f"the adapter was trained on {config['model']}, but the model parameters now "
            f"name {model_params}; re-run training for this model."
        )
    # The seed only draws LoRA's initialisation, which the saved tensors replace.
    trainer, loaded = build_trainer(model_params, runtime, config["classes"], config["method"],
                                    seed=0)
    with torch.no_grad():
        for name, param in trainer.params.items():
            param.copy_(adapter["tensors"][name])
    return trainer, loaded
