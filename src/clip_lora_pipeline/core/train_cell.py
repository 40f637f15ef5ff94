"""Training one few-shot cell's adaptation method, without Kedro: what the training node
(``pipelines/lora/nodes.py``) does, on one process or on several.

``train_cell`` runs ``runtime.devices`` processes on this machine: one trains here (no
launcher, no process group); several are started by torch's elastic launcher
(``core.distributed.launch``), each running ``cell_worker``, and rank 0's adapter,
history and summary come back. For several machines, torchrun starts the processes
and each runs this module's command line, which takes the cell from a config file
(``CellConfig``) and writes rank 0's results to its output folder:

    python -m clip_lora_pipeline.core.train_cell --config cell.yaml   # this machine
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint first-node:29500 -m clip_lora_pipeline.core.train_cell \\
        --config cell.yaml                                         # on each machine
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.adaptation_settings import adaptation_settings
from clip_lora_pipeline.core.adapted import AdaptedClip, load_clip
from clip_lora_pipeline.core.atomic import atomic_path
from clip_lora_pipeline.core.backbone import SettingError
from clip_lora_pipeline.core.distributed import (
    DistributedError,
    Ranks,
    launch,
    process_count,
    process_group,
)
from clip_lora_pipeline.core.errors import SettingsError
from clip_lora_pipeline.core.generated import GeneratedImages
from clip_lora_pipeline.core.manifest import class_table
from clip_lora_pipeline.core.model_id import model_slug
from clip_lora_pipeline.core.models import release_shared_model
from clip_lora_pipeline.core.runtime import (
    RuntimeSettings,
    resolve_device,
    usable_cpus,
)
from clip_lora_pipeline.core.train import TrainingLoop

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellJob:
    """One training run: the ``model`` and ``runtime`` parameters, the entry
    ``adaptation_methods.<name>`` (``method``), the cell's ``train`` and ``val`` frames
    (``path`` relative to ``root``, ``label``), the class names by label, the cell's
    shots and seed, and where checkpoints go."""

    model: dict[str, Any]
    runtime: dict[str, Any]
    name: str
    method: dict[str, Any]
    root: str
    train: pd.DataFrame
    val: pd.DataFrame
    classes: list[str]
    shots: int | None
    seed: int
    checkpoint_root: str


@dataclass
class CellResult:
    adapter: dict[str, Any]  # AdaptedClip.artifact(): tensors and config
    history: pd.DataFrame
    summary: dict[str, Any]


def train_cell(job: CellJob) -> CellResult:
    """Train on ``runtime.devices`` processes of this machine; rank 0's result."""
    release_shared_model()  # the encoding nodes' model: not needed while this trains
    runtime = RuntimeSettings.from_params(job.runtime)
    processes = process_count(runtime.devices, resolve_device(runtime.device))
    if processes == 1:
        return run_cell(job)
    logger.info("Training %s on %d processes", job.name, processes)
    return launch(cell_worker, (job,), processes)


def cell_worker(job: CellJob) -> CellResult | None:
    """One process of a multi-process run (started by ``train_cell`` or torchrun): its
    own device (cuda:<LOCAL_RANK>, or the CPU), the process group, the training; rank
    0's result, None on the others."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.WARNING,
                        format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    if rank == 0:  # the project's progress once, not open_clip's or every rank's
        logging.getLogger("clip_lora_pipeline").setLevel(logging.INFO)
    device = resolve_device(job.runtime.get("device", "auto"))
    # the processes share the cores rather than each taking all (as torchrun's default)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, usable_cpus() // local))
    with process_group(device) as ranks:
        result = run_cell(job, ranks)
    return result if ranks.writer else None


def run_cell(job: CellJob, ranks: Ranks = Ranks()) -> CellResult:
    """Train in this process (``ranks``: its place in a multi-process run). Checkpoints
    go under ``checkpoint_root`` in a folder named by everything the result depends on,
    so an interrupted run resumes and a changed one starts afresh."""
    settings = adaptation_settings(job.name, job.method)
    train_paths = [storage.join(job.root, p) for p in job.train["path"]]
    generated = settings.generated and GeneratedImages.for_training(
        settings.generated, job.train["path"].tolist())
    if ranks.world > 1 and settings.method.fits_head_after_loop:
        # its second stage trains on each process's share with no gradient sum
        raise DistributedError(
            f"adaptation_methods.{job.name}: method {settings.method.name} trains its last "
            "stage in one process only; set runtime.devices: 1 for it.")
    if ranks.world > 1 and min(len(train_paths), settings.train.batch_size) < ranks.world:
        raise DistributedError(
            f"adaptation_methods.{job.name}: {len(train_paths)} training images at "
            f"batch_size {settings.train.batch_size} cannot give each of the {ranks.world} "
            "processes a share of the first batch; lower runtime.devices.")
    loaded, dtype = load_clip(job.model, job.runtime)
    adapted = AdaptedClip.from_settings(loaded, job.classes, settings, job.seed, dtype)
    identity = json.dumps({
        "model": model_slug(loaded.spec), "method": job.method, "root": job.root,
        "train": sorted(job.train["path"]), "val": sorted(job.val["path"]), "seed": job.seed,
        # another precision or device cannot resume this run's optimiser and scaler state
        "precision": str(dtype), "device": loaded.device.type,
        **({"generated": generated.fingerprint()} if generated else {}),
        # nor another process count its per-process RNG states
        **({"processes": ranks.world} if ranks.world > 1 else {}),
    }, sort_keys=True, default=str)
    folder = storage.data_path(job.checkpoint_root) / hashlib.sha1(identity.encode()).hexdigest()[:16]
    train_settings = adapted.settings.train
    try:
        steps = train_settings.total_steps(job.shots, len(job.train))
    except SettingError as exc:  # its message starts with the key
        raise SettingsError(f"adaptation_methods.{job.name}.{exc}") from None
    quicker = (f"lower adaptation_methods.{job.name}.max_steps (now {steps} steps) or pick a "
               f"smaller model: model.name in conf/<env>/globals.yml (now "
               f"{job.model['name']}; ViT-B-32 has a quarter of ViT-B-16's image tokens)")
    result = TrainingLoop(adapted, ranks).fit(
        train_paths, job.train["label"].tolist(),
        [storage.join(job.root, p) for p in job.val["path"]], job.val["label"].to_numpy(),
        loaded.preprocess, steps, checkpoint_dir=folder,
        runtime=RuntimeSettings.from_params(job.runtime), quicker=quicker,
        generated=generated)
    summary = {
        "method": train_settings.method, "shots": job.shots, "steps": result.steps_done,
        "trainable_parameters": result.trainable_parameters,
        "training_seconds": result.wall_seconds, "peak_memory_mb": result.peak_memory_mb,
        "peak_memory_kind": result.peak_memory_kind,
        "best_step": result.best_step, "best_val_accuracy": result.best_val_accuracy,
        "selected": result.selected, "selected_step": result.selected_step,
        "seed": train_settings.seed,
        "stopped_early": result.stopped_early, "checkpoint": str(folder),
        **({"generated_images": generated.counts()} if generated else {}),
        **({"processes": ranks.world} if ranks.world > 1 else {}),
    }
    logger.info("%s: %d trainable parameters; kept the %s state (step %d)",
                train_settings.method, result.trainable_parameters, result.selected,
                result.selected_step)
    return CellResult(adapted.artifact(job.model), result.history, summary)


# The command line (torchrun) ------------------------------------------------------------
@dataclass(frozen=True)
class CellConfig:
    """The config file of ``python -m clip_lora_pipeline.core.train_cell``: ``model``
    and ``runtime`` as the parameters of the same names, ``adaptation`` (the entry's
    name) and ``method`` (the entry, as under ``adaptation_methods``), the dataset's
    ``root``, its ``manifest`` (Parquet or CSV: path, label, class_name) and the cell's
    ``train`` and ``val`` tables (path, label), ``shots``, ``seed``, and the ``output``
    folder (adapter.safetensors, history.parquet, summary.json; checkpoints under
    ``checkpoint_root``, by default <output>/checkpoints). Relative paths are relative
    to the folder the command runs in."""

    model: dict
    adaptation: str
    method: dict
    root: str
    manifest: str
    train: str
    val: str
    output: str
    shots: int | None = None
    seed: int = 1
    runtime: dict | None = None
    checkpoint_root: str | None = None

    def job(self) -> CellJob:
        tables = {key: _table(getattr(self, key), key) for key in ("manifest", "train", "val")}
        return CellJob(dict(self.model), dict(self.runtime or {}), self.adaptation,
                       dict(self.method), self.root, tables["train"], tables["val"],
                       class_table(tables["manifest"]), self.shots, self.seed,
                       self.checkpoint_root or str(Path(self.output) / "checkpoints"))


def _table(path: str, key: str) -> pd.DataFrame:
    if not Path(path).is_file():
        raise SettingsError(f"{key}: {path} does not exist; name a Parquet or CSV table.")
    return pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)


def load_config(path: str | Path) -> CellConfig:
    from clip_lora_pipeline.core.settings import from_params

    values = yaml.safe_load(Path(path).read_text())
    if not isinstance(values, dict):
        raise SettingsError(f"{path} must map the keys of a cell config to values.")
    return from_params(CellConfig, values, str(path), SettingsError)


def write_outputs(result: CellResult, output: str | Path) -> None:
    """The adapter (as the catalog's SafetensorsDataset stores it), history and summary."""
    from safetensors.torch import save_file

    output = Path(output)
    tensors = {k: v.detach().cpu().contiguous() for k, v in result.adapter["tensors"].items()}
    with atomic_path(output / "adapter.safetensors") as staging:
        save_file(tensors, str(staging),
                  metadata={"config": json.dumps(result.adapter["config"])})
    with atomic_path(output / "history.parquet") as staging:
        result.history.to_parquet(staging)
    with atomic_path(output / "summary.json") as staging:
        staging.write_text(json.dumps(result.summary, indent=1, default=str))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the cell's YAML config (CellConfig)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    job = config.job()
    if "WORLD_SIZE" in os.environ:  # one of torchrun's processes
        result = cell_worker(job)
    else:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        result = train_cell(job)
    if result is not None:
        write_outputs(result, config.output)
        logger.info("wrote %s", config.output)


if __name__ == "__main__":
    main()
