"""Loading open_clip models (by name and tag, or from a local checkpoint): the project's
own model configs, a quick check that pretrained weights can be had, and the model
prepared for speed (unfused attention, the class token alone in the last vision block)."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from difflib import get_close_matches
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import open_clip
import torch
from torch import nn

from clip_lora_pipeline.core.attention import (
    mark_causal_text_attention,
    unfuse_attention,
)
from clip_lora_pipeline.core.model_id import (
    ModelError,
    ModelSpec,
    model_slug,
    uses_quick_gelu,
)
from clip_lora_pipeline.core.pooled_block import compute_pooled_token_only

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY_MODEL = "clip-lora-tiny"
RANDOM_WEIGHTS_SEED = 0


def register_model_configs() -> None:
    """Make the project's own configs (the tiny test model) known to open_clip."""
    if TINY_MODEL not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


@dataclass
class LoadedModel:
    model: nn.Module
    preprocess: Any
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
    if spec.quick_gelu is False and open_clip.get_model_config(spec.name).get("quick_gelu"):
        raise ModelError(
            f"model.quick_gelu is false, but {spec.name} is built with QuickGELU by its own "
            "config; use the name without '-quickgelu', or set model.quick_gelu to null."
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


_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _weights_cached(cfg: dict[str, Any]) -> bool:
    hub = cfg.get("hf_hub", "").rstrip("/")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        if any(isinstance(try_to_load_from_cache(hub, f), str) for f in _HUB_FILES):
            return True
    url = cfg.get("url", "")
    return bool(url) and (Path.home() / ".cache" / "clip" / Path(urlparse(url).path).name).exists()


def check_weights_reachable(spec: ModelSpec, timeout: float = 5.0) -> None:
    """Fail in seconds, not after minutes of retries, when pretrained weights are neither
    cached nor downloadable, and say how to use a local checkpoint instead."""
    if spec.checkpoint or not spec.pretrained:
        return
    cfg = open_clip.get_pretrained_cfg(spec.name, spec.pretrained)
    if _weights_cached(cfg):
        return
    host = "huggingface.co" if cfg.get("hf_hub") else urlparse(cfg.get("url", "")).hostname
    if os.environ.get("HF_HUB_OFFLINE") == "1" and cfg.get("hf_hub"):
        reason = "HF_HUB_OFFLINE=1 is set"
    else:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            return
        except OSError as exc:
            reason = f"cannot reach {host}: {exc}"
    raise ModelError(
        f"The weights {spec.name}:{spec.pretrained} are not cached and cannot be downloaded "
        f"({reason}). On a machine with internet, run open_clip.create_model('{spec.name}', "
        f"pretrained='{spec.pretrained}') or download the weights, copy the file here and set "
        "model.checkpoint to its path (model.pretrained is then ignored)."
    )


def load_model(
    spec: ModelSpec, device: torch.device | str = "cpu", unfused_attention: bool = True,
    pooled_token_only: bool = True,
) -> LoadedModel:
    """Create the model, its preprocessing and tokenizer, in eval mode on ``device``.

    With ``unfused_attention`` (the default) every ``nn.MultiheadAttention`` is replaced
    by the numerically equivalent ``core.attention.UnfusedMultiheadAttention``: LoRA
    needs the separate projections, and on CPU its SDPA path also encoded ViT-B-32
    about 9% faster than the fused fast path (benchmarks/README.md). Where the text
    tower's mask is open_clip's causal one, its modules then attend with SDPA's
    ``is_causal`` (``mark_causal_text_attention``), so GPUs can use flash attention. With
    ``pooled_token_only`` (the default) the vision tower's last block computes the class
    token alone (``core.pooled_block.PooledTokenBlock``): image embeddings are unchanged;
    the tower's per-token outputs of that block (``output_tokens``,
    ``forward_intermediates``) are not there.

    The MLPs use QuickGELU where ``uses_quick_gelu(spec)`` says so: open_clip builds
    ``ViT-B-16`` with nn.GELU even for OpenAI's weights, trained with QuickGELU, and
    only warns. ``force_quick_gelu`` rather than the ``-quickgelu`` model name: it works
    for every architecture (the tiny test model has no such name) and keeps the name,
    its tags and its tokenizer as configured.
    """
    _check_spec(spec)
    check_weights_reachable(spec)
    device = torch.device(device)
    weights = spec.checkpoint or spec.pretrained
    if weights is None:
        logger.warning("model %s has random weights (pretrained and checkpoint are null)", spec.name)
    try:
        # Random weights are drawn from a fixed seed: every node, process and re-run
        # must see the same model, or embeddings and adapters would not fit together.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.name, pretrained=weights, device=device,
                force_quick_gelu=uses_quick_gelu(spec),
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
    if unfused_attention:
        unfuse_attention(model)
        mark_causal_text_attention(model)
    if pooled_token_only:
        compute_pooled_token_only(model)
    return LoadedModel(
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(spec.name),
        spec=spec,
        device=device,
    )


@lru_cache(maxsize=1)
def _shared(spec: ModelSpec, device: str) -> LoadedModel:
    return load_model(spec, device)


def shared_model(spec: ModelSpec, device: torch.device | str) -> LoadedModel:
    """One frozen model for the many encoding and zero-shot nodes of a run, loaded once
    per process. Never change it: training loads its own (``load_model``)."""
    return _shared(spec, str(device))


def shared_model_for(model_params: dict[str, Any], runtime: dict[str, Any]) -> LoadedModel:
    """``shared_model`` for the ``model`` and ``runtime`` parameters."""
    from clip_lora_pipeline.core.runtime import resolve_device

    return shared_model(ModelSpec.from_params(model_params),
                        resolve_device(runtime.get("device", "auto")))


def release_shared_model() -> None:
    """Drop the shared model, and on a GPU the cached memory it held: a training node
    needs neither, and its peak memory should be its own."""
    _shared.cache_clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
