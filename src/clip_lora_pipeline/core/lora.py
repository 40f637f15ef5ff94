"""LoRA on open_clip: where it goes (encoders, blocks, matrices), its rank and scaling,
the peft ``LoraConfig`` that targets those layers by name, and ``Lora``, the backbone
method (``core.backbone``) that applies it with peft and stores peft's adapter state.

The q/k/v targets exist only once ``core.attention.unfuse_attention`` has split
open_clip's fused attention into separate ``nn.Linear`` layers (``load_model`` does).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from clip_lora_pipeline.core.backbone import (
    BackboneMethod,
    SettingError,
    check_names,
    is_int,
    is_number,
)
from clip_lora_pipeline.core.dropout import use_fast_dropout
from clip_lora_pipeline.core.errors import SettingsError

ENCODERS = ("vision", "text", "both")
MATRICES = ("q", "k", "v", "o", "mlp")
_TOWER_PREFIX = {"vision": "visual.transformer.resblocks", "text": "transformer.resblocks"}
_MATRIX_MODULES = {
    "q": ["attn.q_proj"], "k": ["attn.k_proj"], "v": ["attn.v_proj"], "o": ["attn.out_proj"],
    "mlp": ["mlp.c_fc", "mlp.c_proj"],
}


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

    def __post_init__(self) -> None:
        if self.encoders not in ENCODERS:
            raise SettingError(f"encoders must be one of {ENCODERS}; got {self.encoders!r}.")
        if self.blocks is not None and not (
                isinstance(self.blocks, tuple) and len(self.blocks) == 2
                and all(map(is_int, self.blocks)) and 0 <= self.blocks[0] < self.blocks[1]):
            raise SettingError(f"blocks must be null (all) or [first, last) with 0 <= first "
                               f"< last; got {self.blocks!r}.")
        if not isinstance(self.matrices, tuple) or not self.matrices \
                or not set(self.matrices) <= set(MATRICES):
            raise SettingError(f"matrices must be a non-empty list of {MATRICES}; got "
                               f"{self.matrices!r}.")
        numbers = {"r": (is_int(self.r) and self.r >= 1, "an integer >= 1"),
                   "alpha": (is_number(self.alpha) and self.alpha > 0, "a number > 0"),
                   "rslora": (isinstance(self.rslora, bool), "true or false"),
                   "dropout": (is_number(self.dropout) and 0 <= self.dropout < 1,
                               "a number in [0, 1)")}
        for key, (ok, allowed) in numbers.items():
            if not ok:
                raise SettingError(f"{key} must be {allowed}; got {getattr(self, key)!r}.")

    @property
    def scaling(self) -> float:
        return self.alpha / (self.r ** 0.5 if self.rslora else self.r)


def target_module_names(model: nn.Module, settings: LoraSettings) -> list[str]:
    """Fully qualified names of the linear layers LoRA adapts."""
    towers = ["vision", "text"] if settings.encoders == "both" else [settings.encoders]
    names = []
    for tower in towers:
        prefix = _TOWER_PREFIX[tower]
        count = len(model.get_submodule(prefix))
        first, last = settings.blocks or (0, count)
        if not 0 <= first < last <= count:
            raise SettingsError(f"lora.blocks {list(settings.blocks)} is outside the {tower} "
                                f"tower's blocks 0..{count}; set blocks: [first, last) within them.")
        for block in range(first, last):
            for matrix in settings.matrices:
                names += [f"{prefix}.{block}.{m}" for m in _MATRIX_MODULES[matrix]]
    missing = [n for n in names if not isinstance(_get(model, n), nn.Linear)]
    if missing:
        raise ValueError(
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


class Lora(BackboneMethod):
    """LoRA with peft: low-rank matrices beside the targeted layers, everything else
    frozen; stored as peft's adapter state dict, merged with ``merge_and_unload``."""

    name = "lora"
    Settings = LoraSettings

    def attach(self, clip: nn.Module, settings: LoraSettings) -> nn.Module:
        from peft import get_peft_model

        wrapped = get_peft_model(clip, peft_config(clip, settings))  # freezes the rest
        if next(clip.parameters()).device.type == "cpu":
            use_fast_dropout(wrapped)
        return wrapped

    def encoder(self, attached: nn.Module) -> nn.Module:
        return attached.base_model.model

    def state(self, attached: nn.Module) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(attached)

    def load_state(self, attached: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        check_names(self.state(attached), tensors)
        set_peft_model_state_dict(attached, dict(tensors))

    def merged(self, attached: nn.Module) -> nn.Module:
        return copy.deepcopy(attached).merge_and_unload()
