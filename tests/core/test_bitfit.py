"""BitFit selects biases (and optionally LayerNorm weights) of the chosen encoders;
freeze_all_but leaves exactly those trainable."""

from __future__ import annotations

import pytest

from clip_lora_pipeline.core.backbone import SettingError
from clip_lora_pipeline.core.bitfit import (
    BitFitSettings,
    bitfit_parameters,
    freeze_all_but,
)
from tests.core.tiny import fresh_tiny


def test_bitfit_selects_biases_and_optionally_layernorm():
    model, _ = fresh_tiny()
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


def test_bitfit_settings_name_the_wrong_key():
    with pytest.raises(SettingError, match=r"^encoders must be one of \('vision', 'text', 'both'\)"):
        BitFitSettings(encoders="image")
    with pytest.raises(SettingError, match="^layernorm must be true or false"):
        BitFitSettings(layernorm="yes")
