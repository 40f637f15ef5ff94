"""CoOp (Zhou et al., 2022, "Learning to Prompt for Vision-Language Models"): learned
context vectors in front of each class name at the text tower's input, CLIP frozen.
``CoOp`` is the backbone method (``core.backbone``). Its class prompts are
"X X ... X <class>." (the official code's prompts, class token at the end), and a
forward hook on open_clip's ``token_embedding`` puts the context vectors where the X's
are, so the trimmed text encoding (``core.prompts``) and ``encode_text`` both see them.

A hook rather than peft's ``TrainableTokens``: that trains rows of the embedding matrix
by token id, so the 16 "X" slots (one id) would share one vector and per-class contexts
would need new token ids; CoOp's context is per position, which the hook sets directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from clip_lora_pipeline.core.backbone import (
    SettingError,
    TrainsItsParameters,
    is_int,
)

PLACEHOLDER = "X"  # the official code's stand-in for each context vector in the prompt
INIT_STD = 0.02  # the official code's random context: normal(0, 0.02)
# The official recipe for ViT-B/16 (configs/trainers/CoOp/vit_b16*.yaml and Dassl's
# defaults): SGD lr 2e-3, momentum 0.9, weight decay 5e-4, batch 32, 1 warm-up epoch at
# a constant 1e-5, then cosine to 0; epochs by shots (50 for 1 shot, 100 for 2-4, 200 for
# 8-16, scripts/coop/README.md).
COOP_TRAINING = {
    "optimizer": "sgd", "lr": 2e-3, "momentum": 0.9, "weight_decay": 5e-4, "min_lr": 0.0,
    "batch_size": 32, "epochs": {1: 50, 2: 100, 4: 100, 8: 200, 16: 200},
    "warmup_epochs": 1, "warmup_lr": 1e-5,
}


@dataclass(frozen=True)
class CoOpSettings:
    """CoOp's own settings; the defaults are the official few-shot runs' (M=16, end)."""

    context_length: int = 16  # context vectors per prompt (N_CTX)
    class_specific: bool = False  # one context per class (CSC) instead of one for all
    init: str | None = None  # words whose embeddings start the context (CTX_INIT)

    def __post_init__(self) -> None:
        if not (is_int(self.context_length) and 1 <= self.context_length <= 64):
            raise SettingError(f"context_length must be an integer from 1 to 64; got "
                               f"{self.context_length!r}.")
        if not isinstance(self.class_specific, bool):
            raise SettingError(f"class_specific must be true or false; got "
                               f"{self.class_specific!r}.")
        if self.init is not None and not (
                isinstance(self.init, str) and len(self.init.split()) == self.context_length):
            raise SettingError(f"init must be null (random context) or context_length "
                               f"({self.context_length}) words such as 'a photo of a'; got "
                               f"{self.init!r}.")


class PromptContext(nn.Module):
    """The context vectors, (classes or 1, length, width), and the class prompts' tokens
    they belong to. ``insert`` is the forward hook on ``token_embedding``: it replaces
    the embeddings after the start token of every row that is one of the class prompts
    (trimmed or not, in any order) and leaves any other text as it was."""

    def __init__(self, settings: CoOpSettings):
        super().__init__()
        self.settings = settings
        self.register_parameter("vectors", None)  # sized by the classes: set_classes
        self.register_buffer("prompts", None, persistent=False)

    def set_classes(self, prompts: torch.Tensor, start: torch.Tensor) -> None:
        """``prompts``: the class prompts' tokens; ``start``: the first context vectors."""
        self.prompts = prompts.to(start.device)
        self.vectors = nn.Parameter(start)

    def insert(self, _: nn.Module, args: tuple[torch.Tensor, ...], embedded: torch.Tensor
               ) -> torch.Tensor:
        if self.vectors is None:
            return embedded
        tokens, length = args[0], self.settings.context_length
        if tokens.shape[1] <= length:  # too short to be a class prompt
            return embedded
        # Which class prompt each row is, compared on the device (no read back to the host).
        same = (tokens[:, None, :] == self.prompts[None, :, :tokens.shape[1]]).all(-1)
        found, row_class = same.any(1), same.int().argmax(1)
        index = row_class if self.settings.class_specific else torch.zeros_like(row_class)
        context = torch.where(found[:, None, None], self.vectors[index].to(embedded.dtype),
                              embedded[:, 1:1 + length])
        return torch.cat([embedded[:, :1], context, embedded[:, 1 + length:]], dim=1)


def _context(clip: nn.Module) -> PromptContext:
    return clip.get_submodule("prompt_context")


class CoOp(TrainsItsParameters):
    """Learned context vectors (one set, or one per class) before the class names; the
    whole of CLIP frozen. Stored as the vectors; cannot be merged into open_clip's
    weights, so the export is the adapter itself."""

    name = "coop"
    Settings = CoOpSettings
    mergeable = False
    train_defaults = COOP_TRAINING

    def attach(self, clip: nn.Module, settings: CoOpSettings) -> nn.Module:
        clip.requires_grad_(False)
        clip.prompt_context = PromptContext(settings)  # a child: the text tower's parameter
        clip.token_embedding.register_forward_hook(clip.prompt_context.insert)
        return clip

    def class_tokens(self, attached: nn.Module, class_names: Sequence[str], template: str,
                     tokenizer: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """"X X ... X <class>." (or the init words before the class); ``template`` is not
        used. The context vectors are made here: their count follows the classes."""
        context = _context(attached)
        settings = context.settings
        prefix = settings.init or " ".join([PLACEHOLDER] * settings.context_length)
        tokens = tokenizer([f"{prefix} {name}." for name in class_names])
        _check_prompts(tokens, class_names, settings)
        count = len(class_names) if settings.class_specific else 1
        context.set_classes(tokens, _start(attached.token_embedding, count, settings,
                                           tokenizer))
        return tokens



def _check_prompts(tokens: torch.Tensor, class_names: Sequence[str],
                   settings: CoOpSettings) -> None:
    """Refuse prompts the text tower would cut, and (with class-specific contexts)
    prompts that tokenise alike, whose classes the hook could not tell apart."""
    full = [name for name, row in zip(class_names, tokens) if row[-1] != 0]
    if full:
        raise ValueError(f"coop.context_length {settings.context_length} plus the class "
                         f"name {full[0]!r} fill the text tower's {tokens.shape[1]} tokens; "
                         "lower coop.context_length or shorten the class names.")
    if settings.class_specific and len(torch.unique(tokens, dim=0)) < len(tokens):
        raise ValueError("coop.class_specific: two class names tokenise alike (names differ "
                         "only in case or punctuation); make the class names distinct.")


def _start(embedding: nn.Embedding, count: int, settings: CoOpSettings,
           tokenizer: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
    """The first ``count`` contexts, (count, length, width): each drawn from normal(0,
    0.02), or all the init words' token embeddings."""
    weight = embedding.weight
    if settings.init is None:
        start = torch.empty(count, settings.context_length, weight.shape[1],
                            device=weight.device)
        return nn.init.normal_(start, std=INIT_STD)
    tokens = tokenizer([settings.init])[0]
    length = int((tokens != 0).sum()) - 2  # between the start and end tokens
    if length != settings.context_length:
        raise ValueError(f"coop.init {settings.init!r} is {length} tokens, not "
                         f"context_length {settings.context_length}: each word must be one "
                         "token (the official code counts words); choose such words, or set "
                         "coop.init: null for a random context.")
    words = weight.detach()[tokens[1:1 + length].to(weight.device)].float()
    return words.expand(count, *words.shape).clone()
