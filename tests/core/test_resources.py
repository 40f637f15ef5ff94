"""Peak memory covers the measured work only, not what the process did before."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# In a fresh process: the test suite's own allocator state (earlier tests, tuned malloc)
# would decide whether the arrays below reach the OS at all.
SCRIPT = """
import json, numpy as np, torch
from clip_lora_pipeline.core.resources import PeakMemory
before = np.ones(400 * 2**20 // 8)  # 400 MB, touched, then freed (mmap'd: RSS drops)
del before
memory = PeakMemory(torch.device("cpu")).start()
baseline = memory.peak_mb()
during = np.ones(100 * 2**20 // 8)  # 100 MB while measuring
print(json.dumps({"since_start": memory.since_start, "baseline": baseline,
                  "peak": memory.peak_mb(), "kind": memory.kind}))
"""


def test_peak_memory_ignores_what_came_before_start():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True, timeout=120)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["since_start"]:
        pytest.skip("this kernel cannot reset the peak RSS (/proc/self/clear_refs)")
    assert 90 < result["peak"] - result["baseline"] < 250, result
    assert result["kind"] == "peak RSS during the run"
