"""Where and how the model runs: the device, the autocast precision, the CPU allocator,
and the peak memory of one stretch of work (a training run, a probe fit)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
from dataclasses import dataclass
from pathlib import Path

import torch

from clip_lora_pipeline.core.distributed import devices_problem
from clip_lora_pipeline.core.errors import SettingsError
from clip_lora_pipeline.core.model_id import ModelError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class RuntimeSettings:
    """The ``runtime`` parameters, checked when the pipelines are built."""

    device: str = "auto"  # auto, cpu, cuda, cuda:<n>
    precision: str = "auto"
    batch_size: int = 128  # images per encoding batch
    num_workers: int | str = "auto"  # DataLoader workers decoding images
    pixel_cache_mb: int = 4096  # decoded training images kept on the training device
    deterministic: bool = False  # deterministic GPU algorithms (bit-exact, slower)
    devices: int | str = 1  # training processes: auto = every visible GPU (core.distributed)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ModelError(f"runtime.precision must be one of {list(PRECISIONS)}, got "
                             f"{self.precision!r}.")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ModelError(f"runtime.device must be auto, cpu, cuda or cuda:<n>, got "
                                 f"{self.device!r}.") from None
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) \
                or self.batch_size < 1:
            raise ModelError(f"runtime.batch_size must be an integer >= 1, got "
                             f"{self.batch_size!r}.")
        if self.num_workers != "auto" and (isinstance(self.num_workers, bool) or not isinstance(
                self.num_workers, int) or self.num_workers < 0):
            raise ModelError(f"runtime.num_workers must be 'auto' or an integer >= 0, got "
                             f"{self.num_workers!r}.")
        if isinstance(self.pixel_cache_mb, bool) or not isinstance(self.pixel_cache_mb, int) \
                or self.pixel_cache_mb < 0:
            raise ModelError(f"runtime.pixel_cache_mb must be an integer >= 0 (0 = no cache), "
                             f"got {self.pixel_cache_mb!r}.")
        if not isinstance(self.deterministic, bool):
            raise ModelError(f"runtime.deterministic must be true or false, got "
                             f"{self.deterministic!r}.")
        if (problem := devices_problem(self.devices, self.device)) is not None:
            raise ModelError(problem)

    @classmethod
    def from_params(cls, params: dict | None) -> RuntimeSettings:
        from clip_lora_pipeline.core.settings import from_params

        return from_params(cls, params, "runtime", ModelError)


def resolve_num_workers(num_workers: int | str, device: torch.device) -> int:
    """'auto': worker processes only when a GPU computes.

    On the CPU the workers would decode on the same cores the model runs on; measured
    on 2 cores, 0 workers encoded ViT-B-32 faster than 1 or 2 (benchmarks/README.md).
    The training processes of a multi-GPU run (LOCAL_WORLD_SIZE) share the cores.
    """
    if num_workers == "auto":
        share = usable_cpus() // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return min(8, max(1, share)) if device.type == "cuda" else 0
    if not isinstance(num_workers, int) or num_workers < 0:
        raise SettingsError(f"runtime.num_workers must be 'auto' or an integer >= 0, got "
                            f"{num_workers!r}.")
    return num_workers


def usable_cpus() -> int:
    """The cores this process may run on: the CPU affinity where the OS has one (a
    container or a scheduler's slice), not every core of the machine."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_device(device: str = "auto", local_rank: int | None = None) -> torch.device:
    """'auto' picks CUDA when it is available, else the CPU. In one process of a
    multi-process run, 'auto' and 'cuda' are that process's own GPU, cuda:<local_rank>
    (by default $LOCAL_RANK, which torchrun and the training launcher set): plain 'cuda'
    would be GPU 0 in every process."""
    if local_rank is None and os.environ.get("LOCAL_RANK", "").isdigit():
        local_rank = int(os.environ["LOCAL_RANK"])
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        device = "cuda"
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} was asked for, but CUDA is not available here.")
    if resolved.type == "cuda" and resolved.index is None and local_rank is not None:
        return torch.device("cuda", local_rank)
    return resolved


def resolve_precision(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The autocast dtype: bf16 on a GPU that has it in hardware, else fp16; fp32 on CPU."""
    if precision not in PRECISIONS:
        raise ModelError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        # Without emulation: V100 and T4 report bf16 "supported" through slow emulation.
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


_allocator_tuned = False


def tune_cpu_allocator() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the OS.

    glibc serves each large activation tensor with a fresh mmap and unmaps it when
    freed, so every batch pays page faults again; on this 2-core CPU that was ~15% of
    ViT-B-32 encoding time. PyTorch's CPU tuning guide suggests jemalloc or tcmalloc for
    the same reason; mallopt does it without a preload. Process-wide and idempotent;
    a no-op where glibc is absent. Memory stays bounded by the largest batch.
    """
    global _allocator_tuned  # noqa: PLW0603
    if _allocator_tuned:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    _allocator_tuned = bool(
        libc.mallopt(m_mmap_max, 0)
        and libc.mallopt(m_trim_threshold, 1 << 30)
        and libc.mallopt(m_top_pad, 64 << 20)
    )
    return _allocator_tuned


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision where asked for; a no-op in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def no_autocast(device: torch.device):
    """Full precision inside an autocast region (a no-op where autocast does not exist,
    such as the ``meta`` device the tests trace on)."""
    if not torch.amp.is_autocast_available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool):
    """``runtime.deterministic``: only deterministic kernels while the block runs (an op
    without one raises and names itself), cuDNN autotuning off, and cuBLAS's
    deterministic workspace. On a CPU training is deterministic either way; on a GPU it
    costs speed (some kernels fall back to slower ones). The previous state returns."""
    if not enabled:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's rule for it
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]
        if before[2] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


# Peak memory --------------------------------------------------------------------------
# Of the measured work, not of the whole process: a Kedro run loads models and tables
# before training starts.
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _status_mb(field: str) -> float:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024  # kB
    raise OSError(f"{_STATUS} has no {field}")


class PeakMemory:
    """What the work itself added at its peak: on a GPU, CUDA's max allocated minus what
    was allocated at ``start()`` (models other nodes left there are not the work's);
    on a CPU, the peak resident set size minus the resident size at ``start()``. Linux
    resets the peak through ``/proc/self/clear_refs``; where it cannot, the lifetime
    peak (``ru_maxrss``) is reported whole and ``since_start`` is False."""

    def __init__(self, device: torch.device):
        self.device = device
        self.since_start = False
        self.baseline_mb = 0.0

    def start(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / 2**20
            self.since_start = True
            return self
        try:
            _CLEAR_REFS.write_text("5")  # 5 = reset the peak RSS ("hiwater") mark
            self.baseline_mb = _status_mb("VmRSS:")
            self.since_start = True
        except OSError:
            self.since_start, self.baseline_mb = False, 0.0
        return self

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20 - self.baseline_mb
        if self.since_start:
            return _status_mb("VmHWM:") - self.baseline_mb
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    @property
    def kind(self) -> str:
        if self.device.type == "cuda":
            return "cuda max allocated above the start"
        return "peak RSS above the start" if self.since_start else "process lifetime peak RSS"
