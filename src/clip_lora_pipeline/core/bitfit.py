"""BitFit: train only the biases (optionally LayerNorm weights too) of the chosen
encoders; ``BitFit`` is the backbone method (``core.backbone``), stored under the
open_clip model's own parameter names and exported as the model itself."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from clip_lora_pipeline.core.backbone import SettingError, TrainsItsParameters
from clip_lora_pipeline.core.lora import ENCODERS


@dataclass(frozen=True)
class BitFitSettings:
    """Train biases only (optionally LayerNorm weights too), in the chosen encoders."""

    encoders: str = "both"
    layernorm: bool = False

    def __post_init__(self) -> None:
        if self.encoders not in ENCODERS:
            raise SettingError(f"encoders must be one of {ENCODERS}; got {self.encoders!r}.")
        if not isinstance(self.layernorm, bool):
            raise SettingError(f"layernorm must be true or false; got {self.layernorm!r}.")


def bitfit_parameters(model: nn.Module, settings: BitFitSettings) -> list[str]:
    """Names of the parameters BitFit trains; everything else is frozen by the caller."""
    prefixes = {"vision": ("visual.",), "text": ("transformer.", "ln_final.", "token_embedding.")}
    towers = ["vision", "text"] if settings.encoders == "both" else [settings.encoders]
    allowed = tuple(p for t in towers for p in prefixes[t])
    layernorms = {
        f"{name}.{p}" if name else p
        for name, module in model.named_modules() if isinstance(module, nn.LayerNorm)
        for p, _ in module.named_parameters(recurse=False)
    }
    chosen = []
    for name, _ in model.named_parameters():
        if not name.startswith(allowed):
            continue
        if name.endswith(".bias") or (settings.layernorm and name in layernorms):
            chosen.append(name)
    return chosen


def freeze_all_but(model: nn.Module, trainable: Iterable[str]) -> int:
    """Set requires_grad on exactly ``trainable``; returns the trainable element count."""
    keep = set(trainable)
    count = 0
    for name, param in model.named_parameters():
        param.requires_grad_(name in keep)
        count += param.numel() if name in keep else 0
    return count


class BitFit(TrainsItsParameters):
    """Biases (and LayerNorm weights) of the model itself: nothing is added, so the
    trained model is its own merged export."""

    name = "bitfit"
    Settings = BitFitSettings

    def attach(self, clip: nn.Module, settings: BitFitSettings) -> nn.Module:
        freeze_all_but(clip, bitfit_parameters(clip, settings))
        return clip

