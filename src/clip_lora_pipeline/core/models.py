"""Loading open_clip models (by name and tag, or from a local checkpoint), and picking
device and precision."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from dataclasses import dataclass
from difflib import get_close_matches
from functools import cache
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY_MODEL = "clip-lora-tiny"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class ModelError(ValueError):
    """A model cannot be found, downloaded or loaded as configured."""


def register_model_configs() -> None:
    """Make the project's own configs (the tiny test model) known to open_clip."""
    if TINY_MODEL not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


@dataclass(frozen=True)
class ModelSpec:
    """Which model: an open_clip name plus a pretrained tag, or a local checkpoint file,
    or neither (random weights, for tests and benchmarks)."""

    name: str
    pretrained: str | None = None
    checkpoint: str | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ModelSpec:
        unknown = sorted(set(params) - {"name", "pretrained", "checkpoint"})
        if unknown or "name" not in params:
            raise ModelError(
                f"model parameters take name, pretrained and checkpoint; got {sorted(params)}."
            )
        return cls(params["name"], params.get("pretrained"), params.get("checkpoint"))


@cache
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_slug(spec: ModelSpec) -> str:
    """A folder-safe name for the model's identity, used in every feature path.

    A checkpoint is identified by its content hash, so replacing the file in place
    never reuses embeddings of the old weights.
    """
    if spec.checkpoint:
        path = Path(spec.checkpoint)
        if not path.is_file():
            raise ModelError(
                f"model.checkpoint {path} does not exist. Point it at a .safetensors, .pt or "
                ".bin file of open_clip weights, or set it to null to use model.pretrained."
            )
        stat = path.stat()
        weights = "ckpt-" + _file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)[:12]
    else:
        weights = spec.pretrained or "random"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{spec.name}__{weights}")


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when it is available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} was asked for, but CUDA is not available here.")
    return resolved


def resolve_precision(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The autocast dtype: bf16 (or fp16 where bf16 is missing) on GPU, fp32 on CPU."""
    if precision not in PRECISIONS:
        raise ModelError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision where asked for; a no-op in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class LoadedModel:
    model: nn.Module
    preprocess: Any
    train_preprocess: Any
    tokenizer: Any
    spec: ModelSpec
    device: torch.device


def _check_spec(spec: ModelSpec) -> None:
    register_model_configs()
    models = open_clip.list_models()
    if spec.name not in models:
        close = get_close_matches(spec.name, models, n=5, cutoff=0.5)
        hint = f" Close names: {close}." if close else ""
        raise ModelError(
            f"Unknown open_clip model {spec.name!r}.{hint} open_clip.list_models() lists all."
        )
    if spec.checkpoint:
        model_slug(spec)  # raises with a clear message when the file is missing
    elif spec.pretrained and not open_clip.is_pretrained_cfg(spec.name, spec.pretrained):
        tags = open_clip.list_pretrained_tags_by_model(spec.name)
        raise ModelError(
            f"{spec.name} has no pretrained tag {spec.pretrained!r}. "
            + (f"Its tags: {tags}." if tags else "open_clip publishes no weights for it; "
               "use model.checkpoint with a local file, or pretrained: null for random weights.")
        )


def load_model(spec: ModelSpec, device: torch.device | str = "cpu") -> LoadedModel:
    """Create the model, its preprocessing and tokenizer, in eval mode on ``device``."""
    _check_spec(spec)
    device = torch.device(device)
    weights = spec.checkpoint or spec.pretrained
    if weights is None:
        logger.warning("model %s has random weights (pretrained and checkpoint are null)", spec.name)
    try:
        model, train_preprocess, preprocess = open_clip.create_model_and_transforms(
            spec.name, pretrained=weights, device=device
        )
    except (RuntimeError, OSError, ConnectionError) as exc:
        if spec.checkpoint:
            raise ModelError(f"Could not load checkpoint {spec.checkpoint} into {spec.name}: {exc}") from exc
        raise ModelError(
            f"Could not download the weights {spec.name}:{spec.pretrained} ({exc}). On a machine "
            "without internet, download them elsewhere and set model.checkpoint to the local "
            "file (model.pretrained is then ignored)."
        ) from exc
    model.eval()
    return LoadedModel(
        model=model,
        preprocess=preprocess,
        train_preprocess=train_preprocess,
        tokenizer=open_clip.get_tokenizer(spec.name),
        spec=spec,
        device=device,
    )
