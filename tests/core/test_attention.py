"""Unfused attention equals open_clip's fused attention, and fusing back restores
open_clip's own state-dict layout."""

from __future__ import annotations

import torch
from torch import nn

from clip_lora_pipeline.core.attention import (
    UnfusedMultiheadAttention,
    open_clip_state_dict,
    unfuse_attention,
)
from clip_lora_pipeline.core.model_id import ModelSpec
from clip_lora_pipeline.core.models import TINY_MODEL, load_model
from tests.core.tiny import assert_close, encode_both, fresh_tiny


def test_load_model_unfuses_by_default():
    loaded = load_model(ModelSpec(TINY_MODEL))
    assert not any(isinstance(m, nn.MultiheadAttention) for m in loaded.model.modules())
    assert sum(isinstance(m, UnfusedMultiheadAttention) for m in loaded.model.modules()) == 4


def test_unfused_attention_equals_fused_in_both_towers(inputs):
    images, tokens = inputs
    model, _ = fresh_tiny()
    before = encode_both(model, images, tokens)
    assert unfuse_attention(model) == 4  # 2 vision + 2 text blocks
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    after = encode_both(model, images, tokens)
    assert_close(after[0], before[0])
    assert_close(after[1], before[1])


def test_fusing_back_restores_open_clip_layout(inputs):
    images, tokens = inputs
    model, _ = fresh_tiny()
    original_keys = set(model.state_dict())
    before = encode_both(model, images, tokens)
    unfuse_attention(model)
    plain = open_clip_state_dict(model)
    assert set(plain) == original_keys
    assert any(isinstance(m, UnfusedMultiheadAttention) for m in model.modules())
    fresh, _ = fresh_tiny()
    with torch.no_grad():
        for param in fresh.parameters():
            param.zero_()
    fresh.load_state_dict(plain)
    after = encode_both(fresh, images, tokens)
    assert_close(after[0], before[0], rtol=1e-6)
    assert_close(after[1], before[1], rtol=1e-6)


def test_unfused_module_matches_with_boolean_and_float_masks():
    torch.manual_seed(0)
    fused = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    unfused = UnfusedMultiheadAttention.from_fused(fused)
    x = torch.randn(2, 5, 16)
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)
    additive = torch.zeros(5, 5).masked_fill(causal, float("-inf"))
    for mask in (None, causal, additive):
        expected = fused(x, x, x, need_weights=False, attn_mask=mask)[0]
        assert torch.allclose(unfused(x, x, x, attn_mask=mask)[0], expected, atol=1e-6)
