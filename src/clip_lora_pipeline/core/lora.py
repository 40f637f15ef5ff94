"""LoRA on open_clip: where it goes (encoders, blocks, matrices), its rank and scaling,
and the peft ``LoraConfig`` that targets those layers by name.

The q/k/v targets exist only once ``core.attention.unfuse_attention`` has split
open_clip's fused attention into separate ``nn.Linear`` layers (``load_model`` does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

ENCODERS = ("vision", "text", "both")
MATRICES = ("q", "k", "v", "o", "mlp")
_TOWER_PREFIX = {"vision": "visual.transformer.resblocks", "text": "transformer.resblocks"}
_MATRIX_MODULES = {
    "q": ["attn.q_proj"], "k": ["attn.k_proj"], "v": ["attn.v_proj"], "o": ["attn.out_proj"],
    "mlp": ["mlp.c_fc", "mlp.c_proj"],
}


class LoraSettingsError(ValueError):
    """LoRA parameters that cannot be applied."""


@dataclass(frozen=True)
class LoraSettings:
    """Where and how LoRA goes. Defaults reproduce CLIP-LoRA (Zanella & Ben Ayed, 2024)."""

    encoders: str = "both"
    blocks: tuple[int, int] | None = None  # [first, last) block indices; None = all
    matrices: tuple[str, ...] = ("q", "k", "v")
    r: int = 2
    alpha: float = 1.0
    rslora: bool = True  # scaling alpha / sqrt(r) instead of alpha / r
    dropout: float = 0.25

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> LoraSettings:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(params) - known)
        if unknown:
            raise LoraSettingsError(f"lora parameters {unknown} are unknown; known: {sorted(known)}.")
        values = dict(params)
        if values.get("blocks") is not None:
            values["blocks"] = tuple(values["blocks"])
        if "matrices" in values:
            values["matrices"] = tuple(values["matrices"])
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.encoders not in ENCODERS:
            raise LoraSettingsError(f"lora.encoders must be one of {ENCODERS}, got {self.encoders!r}.")
        bad = sorted(set(self.matrices) - set(MATRICES))
        if bad or not self.matrices:
            raise LoraSettingsError(f"lora.matrices must be a non-empty subset of {MATRICES}; bad: {bad}.")
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise LoraSettingsError("lora needs r >= 1, alpha > 0 and 0 <= dropout < 1.")

    @property
    def scaling(self) -> float:
        return self.alpha / (self.r ** 0.5 if self.rslora else self.r)


def target_module_names(model: nn.Module, settings: LoraSettings) -> list[str]:
    """Fully qualified names of the linear layers LoRA adapts."""
    settings.validate()
    towers = ["vision", "text"] if settings.encoders == "both" else [settings.encoders]
    names = []
    for tower in towers:
        prefix = _TOWER_PREFIX[tower]
        count = len(model.get_submodule(prefix))
        first, last = settings.blocks or (0, count)
        if not 0 <= first < last <= count:
            raise LoraSettingsError(
                f"lora.blocks {settings.blocks} is outside the {tower} tower's 0..{count} blocks."
            )
        for block in range(first, last):
            for matrix in settings.matrices:
                names += [f"{prefix}.{block}.{m}" for m in _MATRIX_MODULES[matrix]]
    missing = [n for n in names if not isinstance(_get(model, n), nn.Linear)]
    if missing:
        raise LoraSettingsError(
            f"{missing[:3]} are not nn.Linear layers; call unfuse_attention(model) first."
        )
    return names


def _get(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def peft_config(model: nn.Module, settings: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        use_rslora=settings.rslora,
        # A string is matched with re.fullmatch against each module's qualified name.
        target_modules="|".join(re.escape(n) for n in target_module_names(model, settings)),
        bias="none",
    )
