"""LoRA on open_clip: unfused attention, peft targets by name, and BitFit selection.

peft on open_clip's fused ``nn.MultiheadAttention`` puts one rank-r pair on the packed
q/k/v projection, cannot target q, k and v separately, and never applies
``lora_dropout`` there. ``unfuse_attention`` swaps each attention module for a
numerically equivalent one with separate q/k/v/out ``nn.Linear`` layers, which peft
then targets by name.
"""

from __future__ import annotations

import copy
import re
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
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


class UnfusedMultiheadAttention(nn.Module):
    """Self-attention with separate q/k/v/out projections and SDPA.

    Same call signature and result as ``nn.MultiheadAttention(batch_first=True)`` for
    the way open_clip calls it (self-attention, ``need_weights=False``, optional
    additive or boolean ``attn_mask``).
    """

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True):
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.batch_first = True

    @classmethod
    def from_fused(cls, fused: nn.MultiheadAttention) -> UnfusedMultiheadAttention:
        if not fused.batch_first or not fused._qkv_same_embed_dim:
            raise LoraSettingsError(
                "only batch-first self-attention with equal q/k/v sizes can be unfused "
                "(open_clip 3.3's towers); this module has "
                f"batch_first={fused.batch_first}."
            )
        bias = fused.in_proj_bias is not None
        module = cls(fused.embed_dim, fused.num_heads, bias=bias)
        module.to(device=fused.in_proj_weight.device, dtype=fused.in_proj_weight.dtype)
        with torch.no_grad():
            for index, proj in enumerate((module.q_proj, module.k_proj, module.v_proj)):
                rows = slice(index * fused.embed_dim, (index + 1) * fused.embed_dim)
                proj.weight.copy_(fused.in_proj_weight[rows])
                if bias:
                    proj.bias.copy_(fused.in_proj_bias[rows])
            module.out_proj.weight.copy_(fused.out_proj.weight)
            if bias:
                module.out_proj.bias.copy_(fused.out_proj.bias)
        return module

    def to_fused(self) -> nn.MultiheadAttention:
        """The equivalent ``nn.MultiheadAttention``, for plain open_clip state dicts."""
        bias = self.q_proj.bias is not None
        fused = nn.MultiheadAttention(self.embed_dim, self.num_heads, bias=bias, batch_first=True)
        fused.to(device=self.q_proj.weight.device, dtype=self.q_proj.weight.dtype)
        with torch.no_grad():
            fused.in_proj_weight.copy_(torch.cat(
                [self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]))
            fused.out_proj.weight.copy_(self.out_proj.weight)
            if bias:
                fused.in_proj_bias.copy_(torch.cat(
                    [self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]))
                fused.out_proj.bias.copy_(self.out_proj.bias)
        return fused

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query, key=None, value=None, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None, **_: Any):
        batch, length, _ = query.shape
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(query if key is None else key))
        v = self._heads(self.v_proj(query if value is None else value))
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            # nn.MultiheadAttention: True = masked out; SDPA: True = attend.
            attn_mask = ~attn_mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(batch, length, self.embed_dim)
        return self.out_proj(out), None


def _replace_children(model: nn.Module, kind: type, convert) -> int:
    replaced = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, kind):
                setattr(module, child_name, convert(child))
                replaced += 1
    return replaced


def unfuse_attention(model: nn.Module) -> int:
    """Replace every ``nn.MultiheadAttention`` in ``model`` in place; returns the count."""
    return _replace_children(model, nn.MultiheadAttention, UnfusedMultiheadAttention.from_fused)


def fuse_attention(model: nn.Module) -> int:
    """Undo ``unfuse_attention`` in place, so the state dict is open_clip's own layout."""
    return _replace_children(model, UnfusedMultiheadAttention, UnfusedMultiheadAttention.to_fused)


def open_clip_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights in plain open_clip layout (fused attention), model untouched."""
    plain = copy.deepcopy(model)
    fuse_attention(plain)
    return {k: v.detach().contiguous() for k, v in plain.state_dict().items()}


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


class _SharedRandomBits(threading.local):
    """Random bits drawn once per input tensor and shared by the dropouts applied to it.

    peft gives q, k and v their own dropout of the same input, each needing its own
    mask. One int32 draw holds 31 random bits per element: three independent fields
    (bits 0-9, 10-19 and 20-30), so three masks cost one draw. A draw serves only the
    input it was made for (a weak reference tells inputs apart) and only while the
    generator has not moved since (a reseed or another draw starts afresh), so masks
    depend on the RNG state alone: the same seed gives the same masks, and a resumed run
    draws what an uninterrupted one would.
    """

    RESOLUTION_BITS, FIELDS = 10, 3

    def __init__(self) -> None:
        self.source = None
        self.bits: torch.Tensor | None = None
        self.rng_after: torch.Tensor | None = None
        self.used = 0

    @staticmethod
    def _rng_state(device: torch.device) -> torch.Tensor:
        if device.type == "cuda":
            return torch.cuda.get_rng_state(device)
        return torch.get_rng_state()

    def keep_mask(self, x: torch.Tensor, threshold: int) -> torch.Tensor:
        """True where a uniform integer in [0, 1024), independent of every other mask's,
        is at least ``threshold``."""
        fresh = (self.source is None or self.source() is not x or self.used == self.FIELDS
                 or not torch.equal(self.rng_after, self._rng_state(x.device)))
        if fresh:  # random_ on int32 fills [0, 2**31)
            self.bits = torch.empty(x.shape, dtype=torch.int32, device=x.device).random_()
            self.source, self.used = weakref.ref(x), 0
            self.rng_after = self._rng_state(x.device)
        shift = self.RESOLUTION_BITS * self.used
        self.used += 1
        if self.used == self.FIELDS:  # the top field has 11 bits: compare it whole, at 2x
            return self.bits >= (threshold << (shift + 1))
        # a masked field compared with a shifted threshold: no shift of the tensor needed
        return (self.bits & ((2**self.RESOLUTION_BITS - 1) << shift)) >= (threshold << shift)


_random_bits = _SharedRandomBits()


class FastDropout(nn.Dropout):
    """Inverted dropout whose keep mask comes from 10-bit random integers.

    torch's CPU dropout draws one float per element; for the 800 x 768 input of a LoRA
    projection that took 9.8 ms here, more than the 768 x 768 matmul on the same input
    (7.2 ms), and LoRA drops out the input of every q, k and v. The three dropouts of
    one input share an int32 draw (``_SharedRandomBits``): forward and backward of the
    three dropouts of that input took 9.4-11.6 ms, against 13.5-15.4 ms with 15-bit
    fields of an int64 draw. ``p`` is applied at 1/1024 resolution (0.25 exactly; at most
    1023/1024), and the kept values are scaled by the applied rate, so the expectation is
    kept exactly.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        levels = 2**_SharedRandomBits.RESOLUTION_BITS
        threshold = min(round(self.p * levels), levels - 1)
        keep = _random_bits.keep_mask(x, threshold).to(x.dtype)
        # a float mask: x * bool casts in forward and again in backward (1.7x slower here)
        return x * keep.mul_(levels / (levels - threshold))


def use_fast_dropout(model: nn.Module) -> int:
    """Swap peft's ``lora_dropout`` modules for ``FastDropout``; returns the count."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, nn.ModuleDict):
            for key, dropout in dropouts.items():
                if type(dropout) is nn.Dropout:
                    dropouts[key] = FastDropout(dropout.p)
                    swapped += 1
    return swapped


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


@dataclass(frozen=True)
class BitFitSettings:
    """Train biases only (optionally LayerNorm weights too), in the chosen encoders."""

    encoders: str = "both"
    layernorm: bool = False


def bitfit_parameters(model: nn.Module, settings: BitFitSettings) -> list[str]:
    """Names of the parameters BitFit trains; everything else is frozen by the caller."""
    if settings.encoders not in ENCODERS:
        raise LoraSettingsError(f"bitfit.encoders must be one of {ENCODERS}.")
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
