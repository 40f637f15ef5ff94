"""Unfused attention: open_clip's fused ``nn.MultiheadAttention`` swapped for a
numerically equivalent module with separate q/k/v/out ``nn.Linear`` layers, and back.

peft on the fused module puts one rank-r pair on the packed q/k/v projection, cannot
target q, k and v separately, and never applies ``lora_dropout`` there; with separate
layers it targets each by name (``core.lora``). ``load_model`` unfuses every model: on
CPU the SDPA path also encoded ViT-B-32 about 9% faster than the fused fast path.
``open_clip_state_dict`` fuses a copy back, so exported weights load into plain open_clip.

``mark_causal_text_attention`` lets the text tower's modules apply their causal mask
with SDPA's ``is_causal`` instead of the additive float mask: GPUs then run flash
attention, which takes no float mask.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.transformer import TextTransformer
from torch import nn


class UnfusedMultiheadAttention(nn.Module):
    """Self-attention with separate q/k/v/out projections and SDPA.

    Same call signature and result as ``nn.MultiheadAttention(batch_first=True)`` for
    the way open_clip calls it (self-attention, ``need_weights=False``, optional
    additive or boolean ``attn_mask``). With ``causal`` set (``mark_causal_text_attention``)
    it attends causally and ignores ``attn_mask``.
    """

    causal: bool = False

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
            raise ValueError(
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
        if self.causal:
            # Only set on text towers whose blocks are handed the causal mask (verified
            # once, by mark_causal_text_attention), or a leading square of it or None
            # (prompts._encode_prefix): is_causal applies exactly that mask.
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
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


def is_causal_mask(mask: torch.Tensor | None) -> bool:
    """Whether ``mask`` is open_clip's additive causal mask: -inf above the diagonal,
    zeros elsewhere."""
    if mask is None or mask.ndim != 2 or mask.shape[0] != mask.shape[1] \
            or not mask.is_floating_point():
        return False
    causal = torch.full_like(mask, float("-inf")).triu_(1)
    return torch.equal(mask, causal)


def _causal_text_transformer(model: nn.Module) -> nn.Module | None:
    """The text tower's transformer where every block is handed exactly the causal mask."""
    text = getattr(model, "text", None)
    if isinstance(text, TextTransformer):  # CustomTextCLIP, CoCa
        if text.cls_emb is not None or text.use_pad_mask:
            return None  # per-batch class-token and padding terms are added to the mask
        transformer, mask = text.transformer, text.attn_mask
    elif isinstance(model, CLIP):
        transformer, mask = model.transformer, model.attn_mask
    else:
        return None
    return transformer if is_causal_mask(mask) else None


def _text_attention(transformer: nn.Module) -> list[nn.Module]:
    return [getattr(block, "attn", None) for block in getattr(transformer, "resblocks", ())]


def mark_causal_text_attention(model: nn.Module) -> int:
    """Set ``causal`` on the text tower's ``UnfusedMultiheadAttention`` modules where the
    tower's mask is open_clip's causal mask; returns how many were marked (0 for other
    masks, no mask, or no text tower). Call after ``unfuse_attention``."""
    transformer = _causal_text_transformer(model)
    if transformer is None:
        return 0
    marked = 0
    for attn in _text_attention(transformer):
        if isinstance(attn, UnfusedMultiheadAttention):
            attn.causal = True
            marked += 1
    return marked


def is_marked_causal(transformer: nn.Module) -> bool:
    """Whether every block of this (text) transformer attends causally on its own, so
    it needs no mask."""
    attention = _text_attention(transformer)
    return bool(attention) and all(getattr(a, "causal", False) for a in attention)


def open_clip_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights in plain open_clip layout (fused attention), model untouched."""
    plain = copy.deepcopy(model)
    fuse_attention(plain)
    return {k: v.detach().contiguous() for k, v in plain.state_dict().items()}
