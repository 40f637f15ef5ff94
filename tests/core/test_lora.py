"""Unfused attention equals open_clip's fused attention; LoRA starts as the identity;
merged weights equal the adapted model; BitFit selects biases only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import get_peft_model
from torch import nn

from clip_lora_pipeline.core.lora import (
    BitFitSettings,
    FastDropout,
    LoraSettings,
    LoraSettingsError,
    UnfusedMultiheadAttention,
    bitfit_parameters,
    freeze_all_but,
    open_clip_state_dict,
    peft_config,
    target_module_names,
    unfuse_attention,
    use_fast_dropout,
)
from clip_lora_pipeline.core.model_id import ModelSpec
from clip_lora_pipeline.core.models import TINY_MODEL, load_model


def _assert_close(actual, expected, rtol=1e-5):
    """Close relative to the values' scale: rounding error grows with the magnitude of
    what was summed, so an entry near zero gets the tolerance of the largest one."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    np.testing.assert_allclose(actual, expected, rtol=rtol,
                               atol=rtol * float(np.abs(expected).max()))


def _fresh():
    torch.manual_seed(0)
    loaded = load_model(ModelSpec(TINY_MODEL), unfused_attention=False)
    return loaded.model, loaded.tokenizer


@pytest.fixture(scope="module")
def inputs():
    _, tokenizer = _fresh()
    torch.manual_seed(1)
    return torch.randn(4, 3, 32, 32), tokenizer(["a photo of a red circle.", "a dog", "x y z"])


def _outputs(model, images, tokens):
    model.eval()
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def test_load_model_unfuses_by_default():
    loaded = load_model(ModelSpec(TINY_MODEL))
    assert not any(isinstance(m, nn.MultiheadAttention) for m in loaded.model.modules())
    assert sum(isinstance(m, UnfusedMultiheadAttention) for m in loaded.model.modules()) == 4


def test_unfused_attention_equals_fused_in_both_towers(inputs):
    images, tokens = inputs
    model, _ = _fresh()
    before = _outputs(model, images, tokens)
    assert unfuse_attention(model) == 4  # 2 vision + 2 text blocks
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    after = _outputs(model, images, tokens)
    _assert_close(after[0], before[0])
    _assert_close(after[1], before[1])


def test_fusing_back_restores_open_clip_layout(inputs):
    images, tokens = inputs
    model, _ = _fresh()
    original_keys = set(model.state_dict())
    before = _outputs(model, images, tokens)
    unfuse_attention(model)
    plain = open_clip_state_dict(model)
    assert set(plain) == original_keys
    assert any(isinstance(m, UnfusedMultiheadAttention) for m in model.modules())
    fresh, _ = _fresh()
    with torch.no_grad():
        for param in fresh.parameters():
            param.zero_()
    fresh.load_state_dict(plain)
    after = _outputs(fresh, images, tokens)
    _assert_close(after[0], before[0], rtol=1e-6)
    _assert_close(after[1], before[1], rtol=1e-6)


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


def test_targets_follow_encoders_blocks_and_matrices():
    model, _ = _fresh()
    unfuse_attention(model)
    names = target_module_names(model, LoraSettings())
    assert len(names) == 2 * 2 * 3
    assert "visual.transformer.resblocks.0.attn.q_proj" in names
    assert "transformer.resblocks.1.attn.v_proj" in names
    text_only = target_module_names(
        model, LoraSettings(encoders="text", blocks=(1, 2), matrices=("o", "mlp")))
    assert text_only == ["transformer.resblocks.1.attn.out_proj",
                         "transformer.resblocks.1.mlp.c_fc", "transformer.resblocks.1.mlp.c_proj"]
    with pytest.raises(LoraSettingsError, match="outside"):
        target_module_names(model, LoraSettings(blocks=(0, 5)))
    with pytest.raises(LoraSettingsError, match="matrices"):
        LoraSettings.from_params({"matrices": ["q", "z"]})
    with pytest.raises(LoraSettingsError, match="unfuse_attention"):
        target_module_names(_fresh()[0], LoraSettings())


def test_defaults_reproduce_clip_lora():
    settings = LoraSettings()
    assert (settings.r, settings.alpha, settings.dropout) == (2, 1.0, 0.25)
    assert settings.scaling == pytest.approx(1 / 2 ** 0.5)
    assert settings.matrices == ("q", "k", "v") and settings.encoders == "both"


def test_untrained_lora_gives_base_outputs_and_merge_is_exact(inputs):
    images, tokens = inputs
    model, _ = _fresh()
    base = _outputs(model, images, tokens)
    unfuse_attention(model)
    peft_model = get_peft_model(model, peft_config(model, LoraSettings()))
    lora_layers = [n for n, _ in peft_model.named_modules() if n.endswith("q_proj.lora_A")]
    assert len(lora_layers) == 4
    zero = _outputs(peft_model.base_model.model, images, tokens)
    _assert_close(zero[0], base[0])
    _assert_close(zero[1], base[1])

    with torch.no_grad():  # stand-in for training: make the adapters non-zero
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    adapted = _outputs(peft_model.base_model.model, images, tokens)
    assert not torch.allclose(adapted[0], base[0], atol=1e-3)
    merged = peft_model.merge_and_unload()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    exported = _outputs(merged, images, tokens)
    _assert_close(exported[0], adapted[0])
    _assert_close(exported[1], adapted[1])


def test_dropout_is_applied_on_unfused_targets():
    model, _ = _fresh()
    unfuse_attention(model)
    peft_model = get_peft_model(model, peft_config(model, LoraSettings(dropout=0.25)))
    layer = peft_model.base_model.model.visual.transformer.resblocks[0].attn.q_proj
    assert isinstance(layer.lora_dropout["default"], nn.Dropout)
    assert layer.lora_dropout["default"].p == 0.25


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
    model, _ = _fresh()
    unfuse_attention(model)
    peft_model = get_peft_model(model, peft_config(model, LoraSettings(dropout=0.25)))
    assert use_fast_dropout(peft_model) == 12
    layer = peft_model.base_model.model.transformer.resblocks[1].attn.k_proj
    assert isinstance(layer.lora_dropout["default"], FastDropout)
    assert layer.lora_dropout["default"].p == 0.25


def test_bitfit_selects_biases_and_optionally_layernorm():
    model, _ = _fresh()
    names = bitfit_parameters(model, BitFitSettings())
    assert names and all(n.endswith(".bias") for n in names)
    assert any(n.startswith("visual.") for n in names) and any(n.startswith("transformer.") for n in names)
    with_ln = bitfit_parameters(model, BitFitSettings(encoders="vision", layernorm=True))
    assert "visual.ln_post.weight" in with_ln
    assert not any(n.startswith("transformer.") for n in with_ln)
    count = freeze_all_but(model, names)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(trainable) == sorted(names)
    assert count == sum(p.numel() for p in model.parameters() if p.requires_grad)


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
