"""A training run's checkpoint store: the trainable tensors only (``AdaptedClip.state``),
the best validated ones, the optimizer, scheduler, scaler and RNG state, where the run
stands, and the settings it was made with; written atomically (``core.atomic``), so an
interrupted write never looks complete, on any filesystem (``core.storage``)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, load_file, save_file
from upath import UPath

from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.atomic import atomic_dir, current_dir, settled_dir


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The generators training draws from: the CPU's, and the training GPU's (LoRA's
    dropout on a GPU draws there)."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Put back ``rng_state``'s generators. A checkpoint from another device type has
    no state for this one's: its generator keeps its seed (the run still goes on)."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class Progress:
    """Where a run stands; all of it but ``best`` goes into the checkpoint's state."""

    best: dict[str, torch.Tensor]  # the best validated trainable tensors
    step: int = 0
    best_acc: float = -1.0
    best_step: int = 0
    bad_evals: int = 0
    elapsed: float = 0.0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    def state(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "best"}

    def observe(self, accuracy: float, snapshot: Callable[[], dict[str, torch.Tensor]],
                patience: int | None) -> None:
        """Record a validation accuracy of the current state; ``snapshot`` copies it,
        called only when it is the best so far."""
        if accuracy > self.best_acc:
            self.best_acc, self.best_step, self.bad_evals = accuracy, self.step, 0
            self.best = snapshot()
        else:
            self.bad_evals += 1
        self.stopped_early = patience is not None and self.bad_evals >= patience


@dataclass
class Checkpoint:
    trainable: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor]
    state: dict[str, Any]  # optimizer, scheduler, scaler, rng, and Progress.state()


class CheckpointStore:
    """The last checkpoint of one run, in ``folder``."""

    def __init__(self, folder: Path | UPath | str):
        self.folder = storage.data_path(folder)

    def exists(self) -> bool:
        return settled_dir(self.folder)

    def settings(self) -> dict[str, Any]:
        return json.loads((current_dir(self.folder) / "settings.json").read_text())

    def save(self, checkpoint: Checkpoint, settings: dict[str, Any]) -> None:
        with atomic_dir(self.folder) as staging:
            save_file(checkpoint.trainable, str(staging / "trainable.safetensors"))
            save_file(checkpoint.best, str(staging / "best.safetensors"))
            torch.save(checkpoint.state, staging / "state.pt")
            (staging / "settings.json").write_text(json.dumps(settings, indent=1))

    def load(self) -> Checkpoint:
        # map_location: a checkpoint written on a GPU resumes on a CPU-only machine; the
        # optimiser moves its state to the parameters' device when it loads it.
        folder = current_dir(self.folder)
        state = io.BytesIO(storage.read_bytes(folder / "state.pt"))
        return Checkpoint(_tensors(folder / "trainable.safetensors"),
                          _tensors(folder / "best.safetensors"),
                          torch.load(state, weights_only=True, map_location="cpu"))


def _tensors(path: Path | UPath) -> dict[str, torch.Tensor]:
    # safetensors maps a local file; a remote one is read whole
    return load(storage.read_bytes(path)) if storage.is_remote(path) else load_file(str(path))
