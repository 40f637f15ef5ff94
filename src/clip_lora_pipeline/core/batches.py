"""Which training images make each optimizer step, and how a step splits into
micro-batches. Both depend on the step alone, so a resumed run sees the same batches."""

from __future__ import annotations

import numpy as np


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Steps in an epoch of ``n`` images: ceil, the partial last batch is a step too."""
    return -(-n // batch_size)


class EpochBatches:
    """Shuffled epochs cut into batches, the last one partial.

    Every epoch is a fresh permutation of all ``n`` images: 47 images at batch 32 give
    steps of 32, 15, 32, 15, ...; fewer images than ``batch_size`` make one batch of all
    of them. This is what CLIP-LoRA's DataLoader does (shuffle=True, drop_last=False),
    and every batch is one optimizer step there as here.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < 1 or batch_size < 1:
            raise ValueError(f"batches need at least one image and batch_size >= 1; got "
                             f"{n} image(s) and batch_size={batch_size}.")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = batches_per_epoch(n, batch_size)

    def indices(self, step: int) -> np.ndarray:
        epoch, position = divmod(step, self.per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return order[position * self.batch_size:(position + 1) * self.batch_size]

    def size(self, step: int) -> int:
        """How many images ``indices(step)`` holds, without drawing them."""
        position = step % self.per_epoch
        return min(self.batch_size, self.n - position * self.batch_size)


def micro_batches(size: int, micro: int, whole: int | None = None
                  ) -> list[tuple[slice, float]]:
    """Slices of at most ``micro`` rows covering a batch of ``size``, each with its share
    of the batch. Weighting each slice's mean loss by its share makes the accumulated
    gradient that of the whole batch's mean loss, a partial batch included. ``whole``:
    the global batch, when these ``size`` rows are one process's part of it
    (``core.distributed``): the shares are then of the global batch."""
    whole = whole or size
    return [(slice(start, min(start + micro, size)), (min(start + micro, size) - start) / whole)
            for start in range(0, size, micro)]
