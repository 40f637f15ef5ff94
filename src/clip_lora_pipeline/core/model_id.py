"""A model's identity, without importing torch: catalog paths are built from it when
the configuration loads."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any


class ModelError(ValueError):
    """A model cannot be found, downloaded or loaded as configured."""


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


def slug_resolver(name: str, pretrained: str | None = None, checkpoint: str | None = None) -> str:
    """OmegaConf resolver: ``${model_slug:name,pretrained,checkpoint}`` in the catalog."""
    return model_slug(ModelSpec(name, pretrained or None, checkpoint or None))
