"""LoRA on open_clip: where it goes (encoders, blocks, matrices), its rank and scaling,
its variant (LoRA, DoRA, VeRA or IA3, all from peft), the peft config that targets those
layers by name, and ``Lora``, the backbone method (``core.backbone``) that applies it
with peft and stores peft's adapter state.

The q/k/v targets exist only once ``core.attention.unfuse_attention`` has split
open_clip's fused attention into separate ``nn.Linear`` layers (``load_model`` does):
peft refuses DoRA, VeRA and IA3 on the fused ``nn.MultiheadAttention``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from torch import nn

from clip_lora_pipeline.core.backbone import SettingError, is_int, is_number
from clip_lora_pipeline.core.dropout import use_fast_dropout
from clip_lora_pipeline.core.errors import SettingsError
from clip_lora_pipeline.core.peft_backbone import PeftBackbone

ENCODERS = ("vision", "text", "both")
MATRICES = ("q", "k", "v", "o", "mlp")
_TOWER_PREFIX = {"vision": "visual.transformer.resblocks", "text": "transformer.resblocks"}
_MATRIX_MODULES = {
    "q": ["attn.q_proj"], "k": ["attn.k_proj"], "v": ["attn.v_proj"], "o": ["attn.out_proj"],
    "mlp": ["mlp.c_fc", "mlp.c_proj"],
}
# IA3 rescales the MLP's hidden activations once, as its paper does: the input of c_proj.
_IA3_MLP = "mlp.c_proj"
VARIANTS = ("lora", "dora", "vera", "ia3")
# The settings a variant has no use for: refused when set to anything but the default.
_UNUSED = {"vera": ("alpha", "rslora"), "ia3": ("r", "alpha", "rslora", "dropout")}
_WHY_UNUSED = {"vera": "VeRA's trained vectors set the scale of its frozen random "
                       "projections; r is their shared rank",
               "ia3": "IA3 only rescales activations by trained vectors"}


@dataclass(frozen=True)
class LoraSettings:
    """Where and how LoRA goes. Defaults reproduce CLIP-LoRA (Zanella & Ben Ayed, 2024).
    ``variant``: lora; dora (DoRA: LoRA on the weight's direction plus a trained magnitude
    per output); vera (VeRA: frozen random rank-r projections shared by every layer,
    trained scaling vectors); ia3 (IA3: a trained vector rescales each target's output,
    or the MLP's hidden activations for ``mlp``)."""

    variant: str = "lora"
    encoders: str = "both"
    blocks: tuple[int, int] | None = None  # [first, last) block indices; None = all
    matrices: tuple[str, ...] = ("q", "k", "v")
    r: int = 2
    alpha: float = 1.0
    rslora: bool = True  # scaling alpha / sqrt(r) instead of alpha / r
    dropout: float = 0.25

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise SettingError(f"variant must be one of {VARIANTS}; got {self.variant!r}.")
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
        self._check_unused()

    def _check_unused(self) -> None:
        defaults = {f.name: f.default for f in fields(self)}
        for key in _UNUSED.get(self.variant, ()):
            if getattr(self, key) != defaults[key]:
                raise SettingError(
                    f"{key} is not used by variant {self.variant} ({_WHY_UNUSED[self.variant]}); "
                    f"got {getattr(self, key)!r}. Leave {', '.join(_UNUSED[self.variant])} out, "
                    f"or pick variant lora or dora.")

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
                modules = _MATRIX_MODULES[matrix]
                if settings.variant == "ia3" and matrix == "mlp":
                    modules = [_IA3_MLP]
                names += [f"{prefix}.{block}.{m}" for m in modules]
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
    """peft's config for the variant, on exactly the layers ``target_module_names`` lists."""
    from peft import IA3Config, LoraConfig, VeraConfig

    names = target_module_names(model, settings)
    # A string is matched with re.fullmatch against each module's qualified name.
    targets = "|".join(re.escape(n) for n in names)
    if settings.variant == "ia3":
        # feedforward: the vector scales the layer's input (the MLP's hidden activations)
        return IA3Config(target_modules=targets,
                         feedforward_modules=[n for n in names if n.endswith(_IA3_MLP)])
    if settings.variant == "vera":
        return VeraConfig(r=settings.r, target_modules=targets,
                          vera_dropout=settings.dropout, bias="none")
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        use_rslora=settings.rslora,
        use_dora=settings.variant == "dora",
        target_modules=targets,
        bias="none",
    )


class Lora(PeftBackbone):
    """LoRA (or its variant) with peft: trainable parts beside the targeted layers,
    everything else frozen; stored as peft's adapter state dict, merged with
    ``merge_and_unload``."""

    name = "lora"
    Settings = LoraSettings

    def peft_config(self, clip: nn.Module, settings: LoraSettings):
        return peft_config(clip, settings)

    def attach(self, clip: nn.Module, settings: LoraSettings) -> nn.Module:
        wrapped = super().attach(clip, settings)
        if next(clip.parameters()).device.type == "cpu":
            use_fast_dropout(wrapped)
        return wrapped
