"""Peak memory of one stretch of work (a training run, a probe fit), not of the whole
process: a Kedro run loads models and tables before training starts."""

from __future__ import annotations

import resource
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


class PeakMemory:
    """CUDA max allocated on a GPU; on CPU the process's peak resident set size since
    ``start()``. Linux resets that peak through ``/proc/self/clear_refs``; where it
    cannot, the lifetime peak (``ru_maxrss``) is reported and ``since_start`` is False."""

    def __init__(self, device: torch.device):
        self.device = device
        self.since_start = False

    def start(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.since_start = True
            return self
        try:
            _CLEAR_REFS.write_text("5")  # 5 = reset the peak RSS ("hiwater") mark
            self.since_start = True
        except OSError:
            self.since_start = False
        return self

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.since_start:
            for line in _STATUS.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    @property
    def kind(self) -> str:
        if self.device.type == "cuda":
            return "cuda max allocated"
        return "peak RSS during the run" if self.since_start else "process lifetime peak RSS"
