"""What a method that trains CLIP through its backbone provides (LoRA, BitFit): its
settings, the trainable parts it puts on an open_clip model, and how those are stored,
restored and merged into a plain model. ``core.adapted.AdaptedClip`` holds one; the
registry by name is ``core.backbone_methods``."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from clip_lora_pipeline.core.errors import SettingsError


class SettingError(SettingsError):
    """A wrong setting value. The message starts with the setting's key, so whoever
    knows where the settings sit prefixes it (``adaptation_methods.<name>.``)."""


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_names(expected: Iterable[str], given: Iterable[str]) -> None:
    """Refuse stored tensors that are not exactly the model's trainable ones (another
    method, model or version of the format)."""
    expected, given = set(expected), set(given)
    if expected != given:
        raise ValueError(
            f"the stored tensors are not this model's trainable ones: missing "
            f"{sorted(expected - given)[:3]}, unexpected {sorted(given - expected)[:3]} "
            f"({len(expected - given)} and {len(given - expected)} in all)")


class BackboneMethod(ABC):
    """A way to train CLIP on images through its backbone. Subclasses set ``name`` (also
    the key of their own settings in an ``adaptation_methods`` entry) and ``Settings``
    (a frozen dataclass whose ``__post_init__`` raises ``SettingError``), and implement
    the methods below on the module ``attach`` returns. Register an instance in
    ``core.backbone_methods``."""

    name: ClassVar[str]
    Settings: ClassVar[type]
    # What the method learns on, against the methods on cached features (core.methods).
    learns_on: ClassVar[str] = "images through the backbone"
    # False where the trained parts cannot be folded into open_clip's own weights (learned
    # prompt tokens): the export is then the adapter's tensors and config, as trained.
    mergeable: ClassVar[bool] = True
    # Training settings (``core.adaptation_settings.TrainSettings`` keys) this method's
    # published recipe uses where the entry sets none, e.g. CoOp's SGD at 2e-3.
    train_defaults: ClassVar[Mapping[str, Any]] = {}
    # True where ``after_loop`` fits the linear head (2SFS): the loop then trains through
    # the text head, and ``AdaptedClip.from_settings`` leaves the linear head out.
    fits_head_after_loop: ClassVar[bool] = False

    @abstractmethod
    def attach(self, clip: nn.Module, settings: Any) -> nn.Module:
        """Put the trainable parts on ``clip`` (in place) and freeze everything else;
        returns the module that holds them: ``clip`` itself or a wrapper of it."""

    def encoder(self, attached: nn.Module) -> nn.Module:
        """The open_clip model inside ``attached``, the one to encode images and text."""
        return attached

    def class_tokens(self, attached: nn.Module, class_names: Sequence[str], template: str,
                     tokenizer: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """The class prompts' tokens for the text head: the entry's ``template`` with each
        name. A method that learns its own prompt (CoOp) tokenises its prompts instead,
        and sizes its per-class parts by them; called once, right after ``attach``."""
        return tokenizer([template.format(name) for name in class_names])

    @abstractmethod
    def state(self, attached: nn.Module) -> dict[str, torch.Tensor]:
        """The trainable tensors by name, as stored (not copied)."""

    @abstractmethod
    def load_state(self, attached: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
        """Copy ``state``'s tensors back in; ``check_names`` first."""

    def merged(self, attached: nn.Module) -> nn.Module:
        """A plain open_clip model computing what ``attached`` computes (a copy). Only
        called where ``mergeable``."""
        return copy.deepcopy(attached)

    def check_train(self, train: Any) -> None:
        """Refuse training settings (``core.adaptation_settings.TrainSettings``) this
        method cannot follow: raise ``SettingError``, its message starting with the key."""

    def loop_steps(self, settings: Any, total_steps: int) -> int:
        """How many of the run's ``total_steps`` the training loop takes (``settings``:
        the method's own); ``after_loop`` takes the rest."""
        return total_steps

    def after_loop(self, adapted: Any, batches: Iterator[tuple[int, torch.Tensor, torch.Tensor]],
                   steps: int) -> tuple[list[dict[str, Any]], int]:
        """The method's own ``steps`` after the loop, on the state the loop kept, with the
        training batches (step, images, labels) of those steps: 2SFS's second stage.
        Returns their history rows (as the loop writes them) and the count of elements
        they trained. Must be deterministic: no checkpoint is written during them."""
        raise NotImplementedError(f"{type(self).__name__} takes every step in the loop")


class TrainsItsParameters(BackboneMethod, ABC):
    """A method whose trainable tensors are the attached module's own parameters with
    ``requires_grad`` (BitFit's biases, CoOp's context), stored under their names."""

    def state(self, attached: nn.Module) -> dict[str, torch.Tensor]:
        return {n: p for n, p in attached.named_parameters() if p.requires_grad}

    def load_state(self, attached: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
        params = self.state(attached)
        check_names(params, tensors)
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(tensors[name])
