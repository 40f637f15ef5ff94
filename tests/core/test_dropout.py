"""FastDropout keeps the expectation and rate, depends on the seed alone, gives the
dropouts of one input independent masks, and replaces peft's dropout."""

from __future__ import annotations

import torch
from peft import get_peft_model

from clip_lora_pipeline.core.attention import unfuse_attention
from clip_lora_pipeline.core.dropout import FastDropout, use_fast_dropout
from clip_lora_pipeline.core.lora import LoraSettings, peft_config
from tests.core.tiny import fresh_tiny


def test_fast_dropout_keeps_expectation_and_rate():
    torch.manual_seed(0)
    dropout = FastDropout(0.25)
    x = torch.ones(400, 1000)
    out = dropout(x)
    kept = (out != 0).float().mean().item()
    assert abs(kept - 0.75) < 0.005
    assert torch.allclose(out[out != 0], torch.full_like(out[out != 0], 1 / 0.75))
    assert abs(out.mean().item() - 1.0) < 0.01
    dropout.eval()
    assert dropout(x) is x
    torch.manual_seed(1)  # p is applied at 1/1024: 0.1 -> 102/1024, kept values scaled to match
    out = FastDropout(0.1)(x)
    assert abs((out != 0).float().mean().item() - 922 / 1024) < 0.005
    assert torch.allclose(out[out != 0], torch.full_like(out[out != 0], 1024 / 922))
    torch.manual_seed(3)
    first = FastDropout(0.5)(x)
    torch.manual_seed(3)
    assert torch.equal(first, FastDropout(0.5)(x))


def test_fast_dropout_replaces_peft_dropout():
    model, _ = fresh_tiny()
    unfuse_attention(model)
    peft_model = get_peft_model(model, peft_config(model, LoraSettings(dropout=0.25)))
    assert use_fast_dropout(peft_model) == 12
    layer = peft_model.base_model.model.transformer.resblocks[1].attn.k_proj
    assert isinstance(layer.lora_dropout["default"], FastDropout)
    assert layer.lora_dropout["default"].p == 0.25


def test_dropouts_of_one_input_share_a_draw_but_not_a_mask():
    torch.manual_seed(0)
    x = torch.ones(300, 1000)
    q, k, v = (FastDropout(0.25) for _ in range(3))
    masks = [(d(x) != 0) for d in (q, k, v)]
    for a, b in ((0, 1), (0, 2), (1, 2)):  # independent: agree where chance says
        agree = (masks[a] == masks[b]).float().mean().item()
        assert abs(agree - (0.75**2 + 0.25**2)) < 0.01
    assert all(abs(m.float().mean().item() - 0.75) < 0.01 for m in masks)
    # a new input, or a moved generator, starts a new draw: masks depend on the seed only
    torch.manual_seed(0)
    assert torch.equal(q(x) != 0, masks[0])
    y = torch.ones(300, 1000)
    torch.manual_seed(0)
    assert torch.equal(q(y) != 0, masks[0])
