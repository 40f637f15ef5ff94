"""Training on two gloo processes on the CPU, the real code end to end: the training node
(``runtime.devices: 2``) starts the processes itself and returns rank 0's adapter,
which equals a one-process run's on the same global batch (16, dropout 0); and a
two-process run of the command line (``python -m clip_lora_pipeline.core.train_cell``)
SIGKILLed after a checkpoint resumes to the uninterrupted result; and torchrun (how
several machines start it) running that command line gives the node's result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from clip_lora_pipeline.core.manifest import class_table
from clip_lora_pipeline.core.models import TINY_MODEL
from clip_lora_pipeline.pipelines.lora import nodes
from tests.conftest import synthetic_splits
from tests.core.tiny import assert_close

MODEL = {"name": TINY_MODEL, "pretrained": None, "checkpoint": None}
STEPS = 16
# 20 training images at a global batch of 16: steps of 16 (8 + 8) and 4 (2 + 2)
ENTRY = {"method": "lora", "lr": 5e-3, "max_steps": STEPS, "batch_size": 16,
         "eval_every": 8, "checkpoint_every": 4, "crop_scale": [0.5, 1.0],
         "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_splits(tmp_path_factory.mktemp("shapes"), images_per_class=16, shots=4)


def _train(data, root, devices):
    dataset, manifest, train, val, _ = data
    runtime = {"device": "cpu", "devices": devices, "num_workers": 0}
    return nodes.train_adapter(train, val, class_table(manifest), dataset, MODEL, runtime, 4,
                               ENTRY, str(root), name="lora", seed=1)


@pytest.fixture(scope="module")
def two_processes(data, tmp_path_factory):
    return _train(data, tmp_path_factory.mktemp("two"), devices=2)


def test_two_processes_train_the_adapter_one_process_does(data, two_processes, tmp_path):
    adapter, history, summary = two_processes
    one_adapter, one_history, one_summary = _train(data, tmp_path, devices=1)
    assert summary["processes"] == 2 and "processes" not in one_summary
    assert summary["steps"] == STEPS and len(history) == STEPS
    assert adapter["tensors"].keys() == one_adapter["tensors"].keys()
    for name, tensor in one_adapter["tensors"].items():
        assert_close(adapter["tensors"][name], tensor, rtol=1e-4)
    assert not torch.equal(one_adapter["tensors"][name], torch.zeros_like(tensor))  # trained
    # the loss and accuracy of the whole batch, and validation over the whole val set
    assert_close(history["loss"], one_history["loss"], rtol=1e-4)
    assert history["train_accuracy"].tolist() == one_history["train_accuracy"].tolist()
    assert history["val_accuracy"].dropna().tolist() == \
        one_history["val_accuracy"].dropna().tolist()
    assert summary["checkpoint"] != one_summary["checkpoint"]  # not each other's to resume


def _config(data, tmp_path, output) -> str:
    dataset, manifest, train, val, _ = data
    for name, frame in (("manifest", manifest), ("train", train), ("val", val)):
        frame.to_parquet(tmp_path / f"{name}.parquet")
    config = {"model": MODEL, "runtime": {"device": "cpu", "devices": 2, "num_workers": 0},
              "adaptation": "lora", "method": ENTRY, "root": dataset["root"],
              "manifest": str(tmp_path / "manifest.parquet"),
              "train": str(tmp_path / "train.parquet"), "val": str(tmp_path / "val.parquet"),
              "shots": 4, "seed": 1, "output": str(output)}
    path = tmp_path / "cell.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_result(data, two_processes,
                                                                       tmp_path):
    output = tmp_path / "out"
    command = [sys.executable, "-m", "clip_lora_pipeline.core.train_cell",
               "--config", _config(data, tmp_path, output)]
    # Killed, launcher and workers together, as soon as the first checkpoint is settled.
    run = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    start = time.monotonic()
    while run.poll() is None and not list(output.glob("checkpoints/*/last")):
        assert time.monotonic() - start < 120, "no checkpoint within two minutes"
        time.sleep(0.01)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    [last] = output.glob("checkpoints/*/last")
    state = torch.load(last / "state.pt", weights_only=True)
    assert 0 < state["step"] < STEPS and len(state["rng"]) == 2  # killed mid-run
    assert not (output / "adapter.safetensors").exists()

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {last} at step {state['step']}" in resumed.stderr
    tensors = load_file(str(output / "adapter.safetensors"))
    expected = two_processes[0]["tensors"]
    assert tensors.keys() == expected.keys()
    for name, tensor in expected.items():
        assert_close(tensors[name], tensor, rtol=1e-6)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["processes"] == 2


def test_torchrun_runs_the_command_line_as_the_node_runs_its_processes(data, two_processes,
                                                                       tmp_path):
    """How several machines start it (here one machine, two processes): each process
    runs the command line, which joins torchrun's group; rank 0 writes the outputs."""
    output = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         "2", "-m", "clip_lora_pipeline.core.train_cell",
         "--config", _config(data, tmp_path, output)],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    tensors = load_file(str(output / "adapter.safetensors"))
    for name, tensor in two_processes[0]["tensors"].items():
        assert_close(tensors[name], tensor, rtol=1e-6)
