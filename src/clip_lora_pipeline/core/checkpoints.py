"""A training run's checkpoint: the trainable tensors only, the best validated ones, the
optimizer, scheduler, scaler and RNG state, and where the run stands; written atomically
(a staging folder renamed into place), so an interrupted write never looks complete."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def snapshot(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in params.items()}


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

    def observe(self, accuracy: float, params: dict[str, nn.Parameter],
                patience: int | None) -> None:
        """Record a validation accuracy of the current state."""
        if accuracy > self.best_acc:
            self.best_acc, self.best_step, self.bad_evals = accuracy, self.step, 0
            self.best = snapshot(params)
        else:
            self.bad_evals += 1
        self.stopped_early = patience is not None and self.bad_evals >= patience


def save(folder: Path, params: dict[str, nn.Parameter], best: dict[str, torch.Tensor],
         state: dict[str, Any], settings: dict[str, Any]) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        save_file({n: p.detach().cpu().contiguous() for n, p in params.items()},
                  str(staging / "trainable.safetensors"))
        save_file(best, str(staging / "best.safetensors"))
        torch.save(state, staging / "state.pt")
        (staging / "settings.json").write_text(json.dumps(settings, indent=1))
        previous = folder.with_name(folder.name + ".old")
        if folder.exists():
            os.replace(folder, previous)
        os.replace(staging, folder)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def exists(folder: Path) -> bool:
    """Whether ``folder`` holds a checkpoint. A kill between the two renames of ``save``
    leaves only the previous one, under its old name: it is put back."""
    previous = folder.with_name(folder.name + ".old")
    if not folder.exists() and previous.exists():
        os.replace(previous, folder)
    return folder.exists()


def saved_settings(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "settings.json").read_text())


def load(folder: Path, params: dict[str, nn.Parameter]
         ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Copy the saved trainable tensors into ``params``; returns the state and best."""
    trainable = load_file(str(folder / "trainable.safetensors"))
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(trainable[name])
    best = load_file(str(folder / "best.safetensors"))
    return torch.load(folder / "state.pt", weights_only=True), best
