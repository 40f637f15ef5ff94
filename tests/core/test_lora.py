"""LoRA targets follow the settings; untrained LoRA is the identity; merged weights
equal the adapted model; peft's dropout is applied on the unfused targets."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from torch import nn

from clip_lora_pipeline.core.attention import unfuse_attention
from clip_lora_pipeline.core.backbone import SettingError
from clip_lora_pipeline.core.lora import (
    LoraSettings,
    peft_config,
    target_module_names,
)
from tests.core.tiny import assert_close, encode_both, fresh_tiny


def test_targets_follow_encoders_blocks_and_matrices():
    model, _ = fresh_tiny()
    unfuse_attention(model)
    names = target_module_names(model, LoraSettings())
    assert len(names) == 2 * 2 * 3
    assert "visual.transformer.resblocks.0.attn.q_proj" in names
    assert "transformer.resblocks.1.attn.v_proj" in names
    text_only = target_module_names(
        model, LoraSettings(encoders="text", blocks=(1, 2), matrices=("o", "mlp")))
    assert text_only == ["transformer.resblocks.1.attn.out_proj",
                         "transformer.resblocks.1.mlp.c_fc", "transformer.resblocks.1.mlp.c_proj"]
    with pytest.raises(ValueError, match=r"lora\.blocks \[0, 5\] is outside"):
        target_module_names(model, LoraSettings(blocks=(0, 5)))
    with pytest.raises(SettingError, match="^matrices must be"):
        LoraSettings(matrices=("q", "z"))
    with pytest.raises(SettingError, match="^blocks must be"):
        LoraSettings(blocks=(2, 1))
    with pytest.raises(ValueError, match="unfuse_attention"):
        target_module_names(fresh_tiny()[0], LoraSettings())


def test_defaults_reproduce_clip_lora():
    settings = LoraSettings()
    assert (settings.r, settings.alpha, settings.dropout) == (2, 1.0, 0.25)
    assert settings.scaling == pytest.approx(1 / 2 ** 0.5)
    assert settings.matrices == ("q", "k", "v") and settings.encoders == "both"


def test_untrained_lora_gives_base_outputs_and_merge_is_exact(inputs):
    images, tokens = inputs
    model, _ = fresh_tiny()
    base = encode_both(model, images, tokens)
    unfuse_attention(model)
    peft_model = get_peft_model(model, peft_config(model, LoraSettings()))
    lora_layers = [n for n, _ in peft_model.named_modules() if n.endswith("q_proj.lora_A")]
    assert len(lora_layers) == 4
    zero = encode_both(peft_model.base_model.model, images, tokens)
    assert_close(zero[0], base[0])
    assert_close(zero[1], base[1])

    with torch.no_grad():  # stand-in for training: make the adapters non-zero
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    adapted = encode_both(peft_model.base_model.model, images, tokens)
    assert not torch.allclose(adapted[0], base[0], atol=1e-3)
    merged = peft_model.merge_and_unload()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    exported = encode_both(merged, images, tokens)
    assert_close(exported[0], adapted[0])
    assert_close(exported[1], adapted[1])


def test_dropout_is_applied_on_unfused_targets():
    model, _ = fresh_tiny()
    unfuse_attention(model)
    peft_model = get_peft_model(model, peft_config(model, LoraSettings(dropout=0.25)))
    layer = peft_model.base_model.model.visual.transformer.resblocks[0].attn.q_proj
    assert isinstance(layer.lora_dropout["default"], nn.Dropout)
    assert layer.lora_dropout["default"].p == 0.25
