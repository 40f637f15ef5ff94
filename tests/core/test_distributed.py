"""The pieces of multi-process training (core.distributed) on their own: runtime.devices
and the device of each process, each process's share of a batch (together exactly the
one-process batch, an uneven or empty share included), the gradient sum over two real
gloo processes, and checkpoints written by rank 0 alone with every rank's RNG state.
The whole run on two processes: tests/core/test_train_distributed.py."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clip_lora_pipeline.core.adaptation_settings import adaptation_settings
from clip_lora_pipeline.core.adapted import AdaptedClip
from clip_lora_pipeline.core.augment import Augmentation
from clip_lora_pipeline.core.batches import EpochBatches, micro_batches
from clip_lora_pipeline.core.checkpoints import CheckpointStore, Progress
from clip_lora_pipeline.core.distributed import (
    DistributedError,
    GradientSum,
    Ranks,
    free_port,
    process_count,
)
from clip_lora_pipeline.core.model_id import ModelError, ModelSpec
from clip_lora_pipeline.core.models import TINY_MODEL, load_model
from clip_lora_pipeline.core.runtime import RuntimeSettings, resolve_device
from clip_lora_pipeline.core.train import TrainingLoop
from clip_lora_pipeline.core.train_inputs import InputSettings, TrainingBatches
from tests.core.conftest import generated_shapes

AUGMENTATION = Augmentation(32, (0.08, 1.0), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


# runtime.devices and the device of each process ---------------------------------------
@pytest.mark.parametrize("devices", [0, -2, 1.5, "all", True, None, "2"])
def test_runtime_devices_must_be_auto_or_a_process_count(devices):
    with pytest.raises(ModelError, match=r"runtime\.devices must be 'auto' \(every visible "
                                         r"GPU\) or an integer >= 1"):
        RuntimeSettings(devices=devices)


def test_runtime_devices_take_auto_or_a_count_and_refuse_one_named_gpu():
    assert RuntimeSettings(devices="auto").devices == "auto"
    assert RuntimeSettings(device="cpu", devices=4).devices == 4
    assert RuntimeSettings(device="cuda:1").devices == 1  # one GPU, one process: as before
    with pytest.raises(ModelError, match=r"runtime\.devices is 2 but runtime\.device "
                                         r"'cuda:1' names one GPU"):
        RuntimeSettings(device="cuda:1", devices=2)
    with pytest.raises(ModelError, match=r"runtime\.devices must be"):
        RuntimeSettings.from_params({"device": "cpu", "devices": 0})  # as conf gives it


def test_each_process_gets_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("auto") == torch.device("cuda")  # one process: unchanged
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)  # named: kept
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "2")  # as torchrun and the launcher set it
    assert resolve_device("auto") == torch.device("cuda", 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_process_count_from_runtime_devices(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert process_count("auto", cpu) == 1 and process_count(3, cpu) == 3
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert process_count("auto", cuda) == 4 and process_count(2, cuda) == 2
    with pytest.raises(DistributedError, match=r"runtime\.devices is 8 but 4 GPU\(s\)"):
        process_count(8, cuda)


def test_the_processes_of_one_machine_share_its_cores_for_loader_workers(monkeypatch):
    from clip_lora_pipeline.core import runtime

    monkeypatch.setattr(runtime, "usable_cpus", lambda: 16)
    cuda = torch.device("cuda")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert runtime.resolve_num_workers("auto", cuda) == 8  # one process: as before
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert runtime.resolve_num_workers("auto", cuda) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert runtime.resolve_num_workers("auto", cuda) == 1


# Each process's share of a batch ------------------------------------------------------
@pytest.mark.parametrize("size, world, shares", [
    (16, 2, [8, 8]), (15, 2, [7, 8]), (1, 2, [0, 1]), (10, 4, [2, 3, 2, 3]), (5, 1, [5])])
def test_the_shares_of_a_batch_cover_it_once_in_order(size, world, shares):
    parts = [Ranks(rank, world).part(size) for rank in range(world)]
    assert [p.stop - p.start for p in parts] == shares
    assert [i for p in parts for i in range(size)[p]] == list(range(size))


def test_batch_sizes_are_known_without_drawing_and_shares_weigh_by_the_global_batch():
    batches = EpochBatches(47, 16, seed=3)
    assert [batches.size(step) for step in range(8)] == [len(batches.indices(s))
                                                        for s in range(8)]
    assert [batches.size(step) for step in range(4)] == [16, 16, 15, 16]
    # 7 of a global batch of 15, in micro-batches of 4: shares of the global batch
    assert [(p.stop - p.start, share) for p, share in micro_batches(7, 4, 15)] == \
        [(4, 4 / 15), (3, 3 / 15)]
    assert micro_batches(0, 4, 15) == []  # an empty share: no forward


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    manifest = generated_shapes(root, 3, 3, 40)
    return [str(root / p) for p in manifest["path"]], manifest["label"].to_numpy()


@pytest.mark.parametrize("cache_mb", [64, 0], ids=["pixel cache", "files"])
def test_the_processes_shares_together_are_the_one_process_batch(images, cache_mb):
    """9 images at batch 8: steps of 8 (4 + 4 over two processes) and 1 (0 + 1: rank 0's
    share is empty); three processes split 8 as 2 + 3 + 3."""
    paths, labels = images

    def batches(ranks):
        inputs = TrainingBatches(paths, labels, AUGMENTATION, EpochBatches(len(paths), 8, 5),
                                 torch.device("cpu"), InputSettings(0, cache_mb), ranks=ranks)
        return list(inputs.steps(0, 4))

    whole = batches(Ranks())
    assert [len(y) for _, _, y in whole] == [8, 1, 8, 1]
    for world in (2, 3):
        shares = [batches(Ranks(rank, world)) for rank in range(world)]
        for step, (_, x, y) in enumerate(whole):
            parts = [share[step] for share in shares]
            assert all(s == step for s, _, _ in parts)
            assert [len(part_y) for _, _, part_y in parts] == [
                len(range(len(y))[Ranks(r, world).part(len(y))]) for r in range(world)]
            torch.testing.assert_close(torch.cat([px for _, px, _ in parts if len(px)]), x,
                                       rtol=0, atol=0)
            assert torch.equal(torch.cat([py for _, _, py in parts]), y)


# The gradient sum, on two real gloo processes -----------------------------------------
def _sum_gradients(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="localhost", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    used, unused = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    gradient_sum = GradientSum(Ranks.current(), [used, unused])
    steps = [  # (gradient, loss, correct count) of rank 0, of rank 1
        [((1.0, 2.0), 0.25, 1), ((3.0, 4.0), 1.25, 2)],
        [((1.0, 1.0), 0.5, 2), (None, 0.0, 0)],  # rank 1's share is empty: no backward
    ]
    results = []
    for step in steps:
        grad, loss, correct = step[rank]
        used.grad = None if grad is None else torch.tensor(grad)
        loss, correct = gradient_sum(torch.tensor(loss), correct)
        results.append((used.grad.tolist(), unused.grad, float(loss), float(correct)))
    torch.save(results, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_gradients_loss_and_counts_are_summed_and_unused_tensors_keep_none(tmp_path):
    mp.spawn(_sum_gradients, args=(2, free_port(), str(tmp_path)), nprocs=2)
    expected = [([4.0, 6.0], None, 1.5, 3.0), ([1.0, 1.0], None, 0.5, 2.0)]
    for rank in range(2):
        assert torch.load(tmp_path / f"{rank}.pt", weights_only=True) == expected


# Rank 0 alone writes; each rank's RNG state is kept -----------------------------------
class _Pretend(Ranks):
    """One process of a two-process run, without the process group: the collectives the
    checkpoint uses, done locally."""

    def __init__(self, rank: int, world: int):
        super().__init__(rank, world)
        object.__setattr__(self, "calls", [])  # a frozen dataclass

    def start_together(self, params, seed):
        pass

    def gather(self, value):
        return [value] * self.world

    def barrier(self):
        self.calls.append("barrier")

    def writer_first(self, call):
        return call()


def _loop(ranks, tmp_path):
    entry = {"max_steps": 4, "batch_size": 8, "lora": {"r": 2, "dropout": 0.0}}
    adapted = AdaptedClip.from_settings(load_model(ModelSpec(TINY_MODEL)), ["a", "b"],
                                        adaptation_settings("test", entry), seed=1)
    loop = TrainingLoop(adapted, ranks)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(loop.optimizer, T_max=4)
    return loop, scheduler, CheckpointStore(tmp_path / "last")


@pytest.mark.parametrize("rank, writes", [(0, True), (1, False)])
def test_only_rank_zero_writes_the_checkpoint_and_every_rank_waits(tmp_path, rank, writes):
    ranks = _Pretend(rank, 2)
    loop, scheduler, store = _loop(ranks, tmp_path)
    loop._checkpoint(store, Progress(best=loop.adapted.state(), step=2), scheduler)
    assert store.exists() is writes
    assert ranks.calls == ["barrier"]
    if writes:
        rng = store.load().state["rng"]
        assert isinstance(rng, list) and len(rng) == 2  # every process's generators


class _TwoStreams(_Pretend):
    """Rank 0 of two, whose rank 1 draws from a generator seeded 123."""

    def gather(self, value):
        torch.manual_seed(123)
        return [value, {"torch": torch.get_rng_state()}]


def test_each_rank_resumes_its_own_random_stream_and_only_with_as_many_processes(tmp_path):
    loop, scheduler, store = _loop(_TwoStreams(0, 2), tmp_path)
    loop._checkpoint(store, Progress(best=loop.adapted.state(), step=2), scheduler)
    rank_0, rank_1 = store.load().state["rng"]
    assert not torch.equal(rank_0["torch"], rank_1["torch"])
    for rank, saved in ((0, rank_0), (1, rank_1)):
        loop, scheduler, _ = _loop(_Pretend(rank, 2), tmp_path)
        torch.manual_seed(7)
        assert loop._resume(store, scheduler).step == 2
        assert torch.equal(torch.get_rng_state(), saved["torch"])  # its own dropout stream
    loop, scheduler, _ = _loop(Ranks(), tmp_path)
    with pytest.raises(DistributedError, match=r"written by 2 training process\(es\), this "
                                               r"run has 1; resume it with runtime\.devices: 2"):
        loop._resume(store, scheduler)


def test_processes_that_resume_from_different_steps_stop():
    class Apart(_Pretend):
        def gather(self, value):
            return [value, 0]  # rank 1 found no checkpoint (a folder it cannot see)

    Apart(0, 2).agree(0, "the step")
    with pytest.raises(DistributedError, match=r"differ in the step they resume from: "
                                               r"\[8, 0\]"):
        Apart(0, 2).agree(8, "the step they resume from")



def test_a_method_with_a_one_process_last_stage_refuses_several_processes():
    from clip_lora_pipeline.core.distributed import DistributedError, Ranks
    from clip_lora_pipeline.core.train_cell import CellJob, run_cell

    job = CellJob({"name": "clip-lora-tiny"}, {"device": "cpu"}, "two_stage",
                  {"method": "two_stage"}, "root", pd.DataFrame({"path": ["a"], "label": [0]}),
                  pd.DataFrame({"path": ["b"], "label": [0]}), ["x"], 1, 1, "ck")
    with pytest.raises(DistributedError, match=r"two_stage: .*set runtime.devices: 1"):
        run_cell(job, Ranks(rank=0, world=2))
