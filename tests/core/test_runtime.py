"""Device and precision choice, autocast, the CPU allocator, and peak memory that covers
the measured work only, not what the process did before."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from clip_lora_pipeline.core.model_id import ModelError
from clip_lora_pipeline.core.runtime import (
    autocast,
    resolve_device,
    resolve_precision,
    tune_cpu_allocator,
    usable_cpus,
)

# In a fresh process: the test suite's own allocator state (earlier tests, tuned malloc)
# would decide whether the arrays below reach the OS at all.
SCRIPT = """
import json, numpy as np, torch
from clip_lora_pipeline.core.runtime import PeakMemory
before = np.ones(400 * 2**20 // 8)  # 400 MB, touched, then freed (mmap'd: RSS drops)
del before
held = np.ones(300 * 2**20 // 8)  # 300 MB held when the work starts (a loaded model)
memory = PeakMemory(torch.device("cpu")).start()
at_start = memory.peak_mb()
during = np.ones(100 * 2**20 // 8)  # 100 MB while measuring
print(json.dumps({"since_start": memory.since_start, "at_start": at_start,
                  "peak": memory.peak_mb(), "kind": memory.kind}))
"""


def test_peak_memory_is_the_works_own():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True, timeout=120)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["since_start"]:
        pytest.skip("this kernel cannot reset the peak RSS (/proc/self/clear_refs)")
    # the work's own 100 MB: neither the 400 MB freed before nor the 300 MB held
    assert abs(result["at_start"]) < 20 and 90 < result["peak"] < 150, result
    assert result["kind"] == "peak RSS above the start"


def test_device_and_precision_on_cpu():
    device = resolve_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "auto") == torch.float32
    assert resolve_precision(cpu, "bf16") == torch.bfloat16
    with pytest.raises(ModelError, match="precision"):
        resolve_precision(cpu, "fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            resolve_device("cuda")
    with autocast(cpu, torch.bfloat16):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.is_autocast_enabled("cpu")
    with autocast(cpu, torch.float32):
        assert not torch.is_autocast_enabled("cpu")


def test_allocator_tuning_is_idempotent():
    assert tune_cpu_allocator() is tune_cpu_allocator()


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_precision_takes_bf16_only_where_the_gpu_has_it_in_hardware(
        monkeypatch, native, expected):
    """V100 and T4 report bf16 as supported through emulation, which is slow: auto must
    ask without emulation."""
    def supported(including_emulation=True):
        return native or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert resolve_precision(torch.device("cuda"), "auto") == expected


def test_usable_cpus_follow_the_affinity_not_the_machine(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 3}, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert usable_cpus() == 2
    from clip_lora_pipeline.core.runtime import resolve_num_workers

    assert resolve_num_workers("auto", torch.device("cuda")) == 2
    assert resolve_num_workers("auto", torch.device("cpu")) == 0


def test_runtime_settings_check_the_cache_and_determinism():
    from clip_lora_pipeline.core.runtime import RuntimeSettings

    assert RuntimeSettings.from_params({"pixel_cache_mb": 0}).pixel_cache_mb == 0
    with pytest.raises(ModelError, match="runtime.pixel_cache_mb"):
        RuntimeSettings.from_params({"pixel_cache_mb": -1})
    with pytest.raises(ModelError, match="runtime.deterministic"):
        RuntimeSettings.from_params({"deterministic": "yes"})
    with pytest.raises(ModelError, match="runtime.cache_mb: unknown"):
        RuntimeSettings.from_params({"cache_mb": 1})


def test_training_frees_the_shared_model(monkeypatch):
    from clip_lora_pipeline.core import models

    loads = []
    monkeypatch.setattr(models, "load_model", lambda spec, device: loads.append(1) or object())
    models.release_shared_model()
    spec = models.ModelSpec(models.TINY_MODEL)
    first = models.shared_model(spec, "cpu")
    assert models.shared_model(spec, torch.device("cpu")) is first and loads == [1]
    models.release_shared_model()
    assert models.shared_model(spec, "cpu") is not first and loads == [1, 1]
    models.release_shared_model()
