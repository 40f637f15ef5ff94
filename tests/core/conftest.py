"""Fixtures of the core tests."""

from __future__ import annotations

import pytest
import torch

from tests.core.tiny import fresh_tiny


@pytest.fixture(scope="module")
def inputs():
    """Four random images and three tokenised prompts for the tiny model."""
    _, tokenizer = fresh_tiny()
    torch.manual_seed(1)
    return torch.randn(4, 3, 32, 32), tokenizer(["a photo of a red circle.", "a dog", "x y z"])
