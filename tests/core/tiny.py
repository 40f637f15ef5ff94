"""What the core tests share: a float comparison that holds on any x86 CPU, and a fresh
tiny random model."""

from __future__ import annotations

import numpy as np
import torch

from clip_lora_pipeline.core.model_id import ModelSpec
from clip_lora_pipeline.core.models import TINY_MODEL, load_model


def assert_close(actual, expected, rtol=1e-5):
    """Close relative to the values' scale: rounding error grows with the magnitude of
    what was summed, so an entry near zero gets the tolerance of the largest one."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    np.testing.assert_allclose(actual, expected, rtol=rtol,
                               atol=rtol * float(np.abs(expected).max()))


def fresh_tiny():
    """The tiny model with open_clip's fused attention, and its tokenizer."""
    torch.manual_seed(0)
    loaded = load_model(ModelSpec(TINY_MODEL), unfused_attention=False)
    return loaded.model, loaded.tokenizer


def encode_both(model, images, tokens):
    model.eval()
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)
