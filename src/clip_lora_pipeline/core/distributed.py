"""Training one method on several processes (``runtime.devices``): how many, the
process group they share, each one's share of a batch, and the few collectives the loop
needs. A one-process run (``Ranks()``, the default) has no process group: every helper
here is then a no-op, so the single-process loop is unchanged.

Every process holds the whole model and the same trainable tensors. Each step, the
batch sampler draws the global batch and process r takes its contiguous share
(``Ranks.part``); each sample keeps its global slot, so its augmentation is the one a
single process would draw. Losses are weighted by the global batch size, and the
trainable gradients are summed across processes (``Ranks.sum_gradients``): N processes
compute the update one process would on the same batch. Rank 0 alone writes.

The processes are started on this machine by torch's elastic launcher (``launch``), as
``torchrun`` would start them (``core.train_cell`` for several machines); each joins
the group from the environment either sets (RANK, WORLD_SIZE, MASTER_ADDR, ...).
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from clip_lora_pipeline.core.errors import UserError

DEVICES_ALLOWED = ("'auto' (every visible GPU) or an integer >= 1 (processes training "
                   "together: one per GPU, or gloo processes on a CPU)")


class DistributedError(UserError, RuntimeError):
    """A multi-process run that cannot start or that failed in one of its processes."""


def devices_problem(devices: Any, device: str) -> str | None:
    """What is wrong with ``runtime.devices`` (given ``runtime.device``), or None."""
    if devices != "auto" and (isinstance(devices, bool) or not isinstance(devices, int)
                              or devices < 1):
        return f"runtime.devices must be {DEVICES_ALLOWED}, got {devices!r}."
    if devices != 1 and device.startswith("cuda:"):
        return (f"runtime.devices is {devices!r} but runtime.device {device!r} names one GPU; "
                "set runtime.device to auto or cuda to train on several GPUs, or "
                "runtime.devices to 1.")
    return None


def process_count(devices: int | str, device: torch.device) -> int:
    """``runtime.devices`` as processes on this machine: 'auto' is every visible GPU
    (one process on a CPU); on a GPU, no more than are visible."""
    visible = torch.cuda.device_count() if device.type == "cuda" else 0
    if devices == "auto":
        return max(1, visible)
    if device.type == "cuda" and devices > visible:
        raise DistributedError(
            f"runtime.devices is {devices} but {visible} GPU(s) are visible here "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
            "set runtime.devices to auto or at most that.")
    return devices


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Ranks:
        """From the process group this process has joined; one process without one."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def writer(self) -> bool:
        """Whether this process writes checkpoints and outputs (rank 0)."""
        return self.rank == 0

    def part(self, size: int) -> slice:
        """This process's contiguous share of ``size`` items (a batch, the validation
        set); shares differ by at most one item, and are empty where ``size`` is below
        the process count (a small last batch)."""
        return slice(self.rank * size // self.world, (self.rank + 1) * size // self.world)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def writer_first(self, call: Callable[[], Any]) -> Any:
        """``call()`` on rank 0, then on the others (e.g. a check that may tidy a folder)."""
        if self.world == 1:
            return call()
        result = call() if self.writer else None
        dist.barrier()
        return result if self.writer else call()

    def gather(self, value: Any) -> Any:
        """Every process's ``value``, by rank (one process: ``value`` itself)."""
        if self.world == 1:
            return value
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def own(self, gathered: Any, where: str) -> Any:
        """This process's entry of what ``gather`` returned, from a checkpoint written by
        a run of as many processes."""
        saved = len(gathered) if isinstance(gathered, list) else 1
        if saved != self.world:
            raise DistributedError(
                f"{where} was written by {saved} training process(es), this run has "
                f"{self.world}; resume it with runtime.devices: {saved}, or delete it to "
                "start afresh.")
        return gathered[self.rank] if self.world > 1 else gathered

    def agree(self, value: Any, what: str) -> None:
        """Refuse to go on unless every process has the same ``value``."""
        values = self.gather(value) if self.world > 1 else [value]
        if any(v != values[0] for v in values):
            raise DistributedError(f"the training processes differ in {what}: {values}.")

    def total(self, value: float, device: torch.device) -> float:
        """The sum of ``value`` over the processes (e.g. correct counts)."""
        if self.world == 1:
            return value
        tensor = torch.tensor(float(value), dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return float(tensor)

    def start_together(self, params: Sequence[torch.Tensor], seed: int) -> None:
        """Rank 0's initial trainable tensors on every process, and for the other ranks
        a random stream of their own (their dropout masks would otherwise repeat rank
        0's on other samples)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for param in params:
                dist.broadcast(param.data, src=0)
        if not self.writer:
            torch.manual_seed(int(np.random.SeedSequence([seed, self.rank]).generate_state(
                1, np.uint64)[0]))


class GradientSum:
    """Sums the trainable gradients, a step's loss and its correct count over the
    processes, in one all-reduce after the backward; one process: nothing to do.

    By hand rather than DistributedDataParallel: DDP wraps a module's forward, which
    here is split (image features, head, a frozen text tower's cached embeddings, a
    linear head that leaves the text LoRA unused), and a process whose share of a small
    last batch is empty runs no forward at all. The trainable tensors are small (LoRA,
    biases), so one flat all-reduce per step costs little. A tensor no process gave a
    gradient keeps none, so AdamW skips it as one process would; which tensors those are
    is the same every step (the model's structure), so it is known on the host from the
    last step this process had samples in, without reading anything back from the GPU.
    """

    def __init__(self, ranks: Ranks, params: Sequence[torch.Tensor]):
        self.ranks, self.params = ranks, list(params)
        self.used: list[bool] | None = None

    def __call__(self, loss: torch.Tensor, correct: torch.Tensor | int
                 ) -> tuple[torch.Tensor, torch.Tensor | int]:
        if self.ranks.world == 1:
            return loss, correct
        local = [p.grad is not None for p in self.params]
        if any(local):
            self.used = local
        if self.used is None:
            raise DistributedError("a training process had no sample in the first batch; "
                                   "the batch must be at least runtime.devices images.")
        device = loss.device
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([*(g.reshape(-1).float() for g in grads),
                          loss.detach().float().reshape(1),
                          torch.as_tensor(correct, device=device).float().reshape(1)])
        dist.all_reduce(flat)
        offset = 0
        for param, grad, used in zip(self.params, grads, self.used):
            summed = flat[offset:offset + grad.numel()].view_as(grad).to(grad.dtype)
            offset += grad.numel()
            param.grad = summed if used else None
        return flat[-2], flat[-1]


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[Ranks]:
    """Join the process group the launcher (or torchrun) describes in the environment:
    NCCL on GPUs, each process on its own (``device``, cuda:<LOCAL_RANK>); gloo on a CPU."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    try:
        yield Ranks.current()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port free on this machine now, for the launcher's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def launch(worker: Callable[..., Any], args: tuple, processes: int) -> Any:
    """``worker(*args)`` on ``processes`` new processes of this machine, started by
    torch's elastic launcher as ``torchrun --standalone`` would (c10d rendezvous on a
    free local port, no restarts); returns rank 0's result. A process that fails
    stops the others; its error is raised here with its rank."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes,
                          rdzv_backend="c10d", rdzv_endpoint=f"localhost:{free_port()}",
                          run_id=f"clip-lora-{uuid.uuid4().hex[:8]}", max_restarts=0,
                          start_method="spawn")
    try:
        return elastic_launch(config, worker)(*args)[0]
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        message = failure.message
        if isinstance(message, dict):
            message = message.get("message", message)
        raise DistributedError(f"training process {rank} of {processes} failed: {message} "
                               "(its traceback is in the log above).") from None
