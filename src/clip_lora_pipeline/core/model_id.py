"""A model's identity: catalog paths are built from it when the configuration loads.

Importing this module does not import torch; only a pretrained tag whose activation is
not given (``quick_gelu: null``) imports open_clip, once, to read the tag's config.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from clip_lora_pipeline.core.errors import UserError

QUICKGELU_SUFFIX = "-quickgelu"
_FIELDS = ("name", "pretrained", "checkpoint", "quick_gelu")


class ModelError(UserError, ValueError):
    """A model cannot be found, downloaded or loaded as configured."""


@dataclass(frozen=True)
class ModelSpec:
    """Which model: an open_clip name plus a pretrained tag, or a local checkpoint file,
    or neither (random weights, for tests and benchmarks).

    ``quick_gelu``: build the network with QuickGELU (what OpenAI's weights were trained
    with) instead of the name's own activation; None takes it from the tag's open_clip
    config (``pretrained``, also when a ``checkpoint`` of that tag's weights is loaded).
    """

    name: str
    pretrained: str | None = None
    checkpoint: str | None = None
    quick_gelu: bool | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ModelSpec:
        unknown = sorted(set(params) - set(_FIELDS))
        if unknown or "name" not in params:
            raise ModelError(
                f"model parameters take {', '.join(_FIELDS)} (name required); got "
                f"{sorted(params)}."
            )
        quick_gelu = params.get("quick_gelu")
        if quick_gelu is not None and not isinstance(quick_gelu, bool):
            raise ModelError(
                f"model.quick_gelu must be true, false or null (null: from the pretrained "
                f"tag's config), got {quick_gelu!r}."
            )
        # An empty string is how an unset value arrives from an interpolation.
        return cls(params["name"], params.get("pretrained") or None,
                   params.get("checkpoint") or None, quick_gelu)


@cache
def tag_uses_quick_gelu(name: str, pretrained: str) -> bool:
    """Whether open_clip's config for the pretrained tag says its weights were trained
    with QuickGELU (OpenAI's and some others'); False for an unknown tag."""
    import open_clip  # imports torch: only when a tag's activation must be looked up

    return bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))


def uses_quick_gelu(spec: ModelSpec) -> bool:
    """The activation to force: the spec's own choice, else the tag's config."""
    if spec.quick_gelu is not None:
        return spec.quick_gelu
    return bool(spec.pretrained) and tag_uses_quick_gelu(spec.name, spec.pretrained)


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
    never reuses embeddings of the old weights. A network built with QuickGELU is named
    as open_clip names it (``ViT-B-16-quickgelu``), so embeddings cached with another
    activation are never reused.
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
    name = spec.name
    if uses_quick_gelu(spec) and not name.endswith(QUICKGELU_SUFFIX):
        name += QUICKGELU_SUFFIX
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{name}__{weights}")


def slug_resolver(name: str | Mapping[str, Any], pretrained: str | None = None,
                  checkpoint: str | None = None, quick_gelu: bool | str | None = None) -> str:
    """OmegaConf resolver for the catalog: ``${model_slug:${globals:model}}`` (the whole
    model mapping), or ``${model_slug:name,pretrained,checkpoint[,quick_gelu]}``."""
    if isinstance(name, Mapping):
        return model_slug(ModelSpec.from_params({key: name[key] for key in name}))
    if isinstance(quick_gelu, str):  # a literal argument: true / false / null
        quick_gelu = {"true": True, "false": False, "null": None, "": None}.get(
            quick_gelu.lower(), quick_gelu)
    return model_slug(ModelSpec.from_params(
        {"name": name, "pretrained": pretrained, "checkpoint": checkpoint,
         "quick_gelu": quick_gelu}))
