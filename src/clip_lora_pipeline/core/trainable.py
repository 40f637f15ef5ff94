"""How many elements a backbone method trains on a model, from its registered name and
its own settings: the cost figure a report or benchmark puts beside each method."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from clip_lora_pipeline.core import settings as typed
from clip_lora_pipeline.core.backbone_methods import BACKBONE_METHODS


def trainable_count(method_name: str, model: nn.Module,
                    settings: Mapping[str, Any] | None = None) -> int:
    """Elements ``BACKBONE_METHODS[method_name]`` trains on ``model`` with ``settings``
    (its own, as under its key in an ``adaptation_methods`` entry, e.g. ``{"variant":
    "dora"}`` for lora; None: its defaults). ``model`` is changed in place (the method's
    parts attached, the rest frozen): pass a fresh one, unfused
    (``core.attention.unfuse_attention``) as ``load_model`` gives it. A head trained
    with it is not counted (two_stage's stage 2: classes x embedding width more)."""
    if method_name not in BACKBONE_METHODS:
        raise ValueError(f"no backbone method {method_name!r}; registered: "
                         f"{sorted(BACKBONE_METHODS)} (core.backbone_methods).")
    method = BACKBONE_METHODS[method_name]
    own = typed.from_params(method.Settings, settings, method_name)
    attached = method.attach(model, own)
    return sum(p.numel() for p in attached.parameters() if p.requires_grad)
