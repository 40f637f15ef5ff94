"""A backbone method (``core.backbone``) that peft applies: a peft config targets the
model's layers by name, peft adds the trainable parts and freezes the rest, its adapter
state dict is what is stored, and ``merge_and_unload`` gives the plain model. LoRA and
its variants (``core.lora``) and 2SFS's LayerNorm tuning (``core.two_stage``) are these.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from clip_lora_pipeline.core.backbone import BackboneMethod, check_names


class PeftBackbone(BackboneMethod):
    """Subclasses say which peft config their settings make (``peft_config``)."""

    @abstractmethod
    def peft_config(self, clip: nn.Module, settings: Any):
        """The peft config (``LoraConfig``, ``LNTuningConfig``, ...) for ``clip``."""

    def attach(self, clip: nn.Module, settings: Any) -> nn.Module:
        from peft import get_peft_model

        return get_peft_model(clip, self.peft_config(clip, settings))  # freezes the rest

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
