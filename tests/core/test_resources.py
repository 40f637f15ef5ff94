"""Peak memory covers the measured work only, not what the process did before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clip_lora_pipeline.core.resources import PeakMemory


def test_peak_memory_ignores_what_came_before_start():
    before = np.ones(400 * 2**20 // 8)  # 400 MB, touched, then freed (mmap'd: RSS drops)
    del before
    memory = PeakMemory(torch.device("cpu")).start()
    if not memory.since_start:
        pytest.skip("this kernel cannot reset the peak RSS (/proc/self/clear_refs)")
    baseline = memory.peak_mb()
    during = np.ones(100 * 2**20 // 8)  # 100 MB while measuring
    peak = memory.peak_mb()
    del during
    assert 90 < peak - baseline < 250, (baseline, peak)
    assert memory.kind == "peak RSS during the run"
