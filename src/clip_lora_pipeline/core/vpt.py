"""Visual Prompt Tuning (VPT; Jia et al., 2022) on open_clip's vision tower: learned
prompt tokens between the class token and the patch tokens, at the first block's input
(``shallow``) or at every block's (``deep``), everything else frozen. ``Vpt`` is the
backbone method (``core.backbone``); its adapter is the prompts alone and it does not
merge: open_clip's model has no place for extra tokens.

Written by hand, with forward hooks on open_clip's own modules (no fork): peft's prompt
methods are for language models, timm's VPT for timm's ViTs. Followed from the paper's
code (github.com/KMnP/vpt, ``src/models/vit_prompt/vit.py``): the prompts sit right
after the class token; ``deep`` replaces the previous block's outputs at the prompts'
places with the next block's prompts; dropout applies to the prompts only; the
initialisation is uniform in [-v, v], v = sqrt(6 / (3 * patch area + width)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import torch
from open_clip.transformer import VisionTransformer
from torch import nn

from clip_lora_pipeline.core.backbone import (
    BackboneMethod,
    SettingError,
    check_names,
    is_int,
    is_number,
)
from clip_lora_pipeline.core.errors import SettingsError

DEPTHS = ("shallow", "deep")


@dataclass(frozen=True)
class VptSettings:
    """Where the prompts go and how many. Defaults are the paper's code's (5 tokens,
    no dropout), with the shallow variant."""

    depth: str = "shallow"  # shallow: the first block's input; deep: every block's
    length: int = 5  # prompt tokens per block
    dropout: float = 0.0  # on the prompts, while training

    def __post_init__(self) -> None:
        if self.depth not in DEPTHS:
            raise SettingError(f"depth must be one of {DEPTHS}; got {self.depth!r}.")
        if not is_int(self.length) or self.length < 1:
            raise SettingError(f"length must be an integer >= 1; got {self.length!r}.")
        if not is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise SettingError(f"dropout must be a number in [0, 1); got {self.dropout!r}.")


def prompt_bound(visual: VisionTransformer) -> float:
    """VPT's "xavier uniform" bound, over a patch's 3 x h x w pixels and the width."""
    patch_area = math.prod(visual.patch_size)
    return math.sqrt(6.0 / (3 * patch_area + visual.transformer.width))


def _vision_tower(clip: nn.Module) -> VisionTransformer:
    visual = getattr(clip, "visual", None)
    if not isinstance(visual, VisionTransformer) or not visual.transformer.batch_first:
        raise SettingsError(
            f"method vpt needs an open_clip ViT vision tower (VisionTransformer, batch first); "
            f"this model's is {type(visual).__name__}. Pick a ViT model (model.name in "
            "conf/<env>/globals.yml), or another adaptation method.")
    return visual


class PromptedClip(nn.Module):
    """The open_clip model (``clip``, frozen) and the prompts (``prompts``: one row of
    ``length`` tokens per prompted block). Hooks on the vision tower put the prompts in
    while it runs and take them out of its output, so the class token is what pooling
    reads, the tower returns its usual tokens, and the text tower never sees them.
    A ``PooledTokenBlock`` last block (``core.pooled_block``) still works: its class token
    attends to the prompts as the full block's would. The tower's ``forward_intermediates``
    (unused here) would return the prompts among the tokens."""

    def __init__(self, clip: nn.Module, settings: VptSettings):
        super().__init__()
        visual = _vision_tower(clip)
        blocks = visual.transformer.resblocks
        count = len(blocks) if settings.depth == "deep" else 1
        self.clip = clip
        self.prompts = nn.Parameter(torch.empty(count, settings.length,
                                                visual.transformer.width,
                                                device=visual.class_embedding.device))
        bound = prompt_bound(visual)
        nn.init.uniform_(self.prompts, -bound, bound)
        self.dropout = nn.Dropout(settings.dropout)
        self._hooks = [blocks[0].register_forward_pre_hook(self._insert)]
        self._hooks += [blocks[i].register_forward_pre_hook(partial(self._replace, i))
                        for i in range(1, count)]
        self._hooks.append(visual.transformer.register_forward_hook(self._remove))

    def _block_prompts(self, block: int, tokens: torch.Tensor) -> torch.Tensor:
        prompts = self.prompts[block].to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        return self.dropout(prompts)

    def _insert(self, _module: nn.Module, args: tuple) -> tuple:
        """Before the first block: [class, prompts, patches] (after ln_pre, where the
        input of block 0 is what later blocks' prompts replace too)."""
        tokens, *rest = args
        prompts = self._block_prompts(0, tokens)
        return (torch.cat([tokens[:, :1], prompts, tokens[:, 1:]], dim=1), *rest)

    def _replace(self, block: int, _module: nn.Module, args: tuple) -> tuple:
        """Before block ``block`` (deep): its own prompts where the last block's were."""
        tokens, *rest = args
        prompts = self._block_prompts(block, tokens)
        after = 1 + self.prompts.shape[1]
        return (torch.cat([tokens[:, :1], prompts, tokens[:, after:]], dim=1), *rest)

    def _remove(self, _module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
        if output.shape[1] == 1:  # a PooledTokenBlock returned the class token alone
            return output
        return torch.cat([output[:, :1], output[:, 1 + self.prompts.shape[1]:]], dim=1)

    def detach(self) -> nn.Module:
        """The open_clip model without the hooks: it computes what it did before."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        return self.clip


class Vpt(BackboneMethod):
    """Learned prompt tokens in the vision tower; CLIP frozen. Trains with the project's
    defaults (AdamW 2e-4, cosine), not the paper's recipe: that was SGD (momentum 0.9)
    with a learning rate and weight decay searched per task, for a new linear head on an
    ImageNet-21k ViT on full or 1000-image training sets, which sets no default for
    CLIP few-shot; and this loop trains with AdamW only."""

    name = "vpt"
    Settings = VptSettings
    mergeable = False

    def attach(self, clip: nn.Module, settings: VptSettings) -> nn.Module:
        clip.requires_grad_(False)
        return PromptedClip(clip, settings)

    def encoder(self, attached: nn.Module) -> nn.Module:
        return attached.clip

    def state(self, attached: nn.Module) -> dict[str, torch.Tensor]:
        return {"prompts": attached.prompts}

    def load_state(self, attached: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
        check_names(self.state(attached), tensors)
        if tensors["prompts"].shape != attached.prompts.shape:
            raise ValueError(f"the stored prompts have shape {tuple(tensors['prompts'].shape)}, "
                             f"this model's {tuple(attached.prompts.shape)} (depth, length, "
                             "width): they were trained with other vpt settings or model")
        with torch.no_grad():
            attached.prompts.copy_(tensors["prompts"])

    def merged(self, attached: nn.Module) -> nn.Module:
        raise TypeError("vpt's prompts cannot be merged into open_clip's weights "
                        "(mergeable is False); export the adapter as trained.")
