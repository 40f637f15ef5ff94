"""Dropout for LoRA on CPU: ``FastDropout`` draws its keep mask as 10-bit integers, and
the dropouts of one input (peft's q, k and v) share one draw; ``use_fast_dropout``
swaps it in for peft's ``lora_dropout`` (and VeRA's ``vera_dropout``) modules
(``core.lora.Lora.attach`` does on CPU)."""

from __future__ import annotations

import threading
import weakref

import torch
from torch import nn


class _SharedRandomBits(threading.local):
    """Random bits drawn once per input tensor and shared by the dropouts applied to it.

    peft gives q, k and v their own dropout of the same input, each needing its own
    mask. One int32 draw holds 31 random bits per element: three independent fields
    (bits 0-9, 10-19 and 20-30), so three masks cost one draw. A draw serves only the
    input it was made for (a weak reference tells inputs apart) and only while the
    generator has not moved since (a reseed or another draw starts afresh), so masks
    depend on the RNG state alone: the same seed gives the same masks, and a resumed run
    draws what an uninterrupted one would.
    """

    RESOLUTION_BITS, FIELDS = 10, 3

    def __init__(self) -> None:
        self.source = None
        self.bits: torch.Tensor | None = None
        self.rng_after: torch.Tensor | None = None
        self.used = 0

    @staticmethod
    def _rng_state(device: torch.device) -> torch.Tensor:
        if device.type == "cuda":
            return torch.cuda.get_rng_state(device)
        return torch.get_rng_state()

    def keep_mask(self, x: torch.Tensor, threshold: int) -> torch.Tensor:
        """True where a uniform integer in [0, 1024), independent of every other mask's,
        is at least ``threshold``."""
        fresh = (self.source is None or self.source() is not x or self.used == self.FIELDS
                 or not torch.equal(self.rng_after, self._rng_state(x.device)))
        if fresh:  # random_ on int32 fills [0, 2**31)
            self.bits = torch.empty(x.shape, dtype=torch.int32, device=x.device).random_()
            self.source, self.used = weakref.ref(x), 0
            self.rng_after = self._rng_state(x.device)
        shift = self.RESOLUTION_BITS * self.used
        self.used += 1
        if self.used == self.FIELDS:  # the top field has 11 bits: compare it whole, at 2x
            return self.bits >= (threshold << (shift + 1))
        # a masked field compared with a shifted threshold: no shift of the tensor needed
        return (self.bits & ((2**self.RESOLUTION_BITS - 1) << shift)) >= (threshold << shift)


_random_bits = _SharedRandomBits()


class FastDropout(nn.Dropout):
    """Inverted dropout whose keep mask comes from 10-bit random integers.

    torch's CPU dropout draws one float per element; for the 800 x 768 input of a LoRA
    projection that took 9.8 ms here, more than the 768 x 768 matmul on the same input
    (7.2 ms), and LoRA drops out the input of every q, k and v. The three dropouts of
    one input share an int32 draw (``_SharedRandomBits``): forward and backward of the
    three dropouts of that input took 9.4-11.6 ms, against 13.5-15.4 ms with 15-bit
    fields of an int64 draw. ``p`` is applied at 1/1024 resolution (0.25 exactly; at most
    1023/1024), and the kept values are scaled by the applied rate, so the expectation is
    kept exactly.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        levels = 2**_SharedRandomBits.RESOLUTION_BITS
        threshold = min(round(self.p * levels), levels - 1)
        keep = _random_bits.keep_mask(x, threshold).to(x.dtype)
        # a float mask: x * bool casts in forward and again in backward (1.7x slower here)
        return x * keep.mul_(levels / (levels - threshold))


def use_fast_dropout(model: nn.Module) -> int:
    """Swap peft's ``lora_dropout`` and ``vera_dropout`` modules for ``FastDropout``;
    returns the count."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", getattr(module, "vera_dropout", None))
        if isinstance(dropouts, nn.ModuleDict):
            for key, dropout in dropouts.items():
                if type(dropout) is nn.Dropout:
                    dropouts[key] = FastDropout(dropout.p)
                    swapped += 1
    return swapped
