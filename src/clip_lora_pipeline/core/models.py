"""Loading open_clip models (by name and tag, or from a local checkpoint), and picking
device and precision."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import socket
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import open_clip
import torch
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn

from clip_lora_pipeline.core.lora import unfuse_attention
from clip_lora_pipeline.core.model_id import (
    ModelError,
    ModelSpec,
    model_slug,
    uses_quick_gelu,
)

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY_MODEL = "clip-lora-tiny"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RANDOM_WEIGHTS_SEED = 0


def register_model_configs() -> None:
    """Make the project's own configs (the tiny test model) known to open_clip."""
    if TINY_MODEL not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


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


_allocator_tuned = False


def tune_cpu_allocator() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the OS.

    glibc serves each large activation tensor with a fresh mmap and unmaps it when
    freed, so every batch pays page faults again; on this 2-core CPU that was ~15% of
    ViT-B-32 encoding time. PyTorch's CPU tuning guide suggests jemalloc or tcmalloc for
    the same reason; mallopt does it without a preload. Process-wide and idempotent;
    a no-op where glibc is absent. Memory stays bounded by the largest batch.
    """
    global _allocator_tuned  # noqa: PLW0603
    if _allocator_tuned:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    _allocator_tuned = bool(
        libc.mallopt(m_mmap_max, 0)
        and libc.mallopt(m_trim_threshold, 1 << 30)
        and libc.mallopt(m_top_pad, 64 << 20)
    )
    return _allocator_tuned


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision where asked for; a no-op in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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


class PooledTokenBlock(ResidualAttentionBlock):
    """A vision tower's last block, computed for the class token only.

    A ViT that pools its class token reads nothing else from the last block, yet
    open_clip runs that block's attention output, MLP and residuals over every token. Here
    the class token alone queries (keys and values still come from every token), so
    the block returns one token per image. The class token's output is the same up to
    rounding; 49 of the 50 ViT-B/32 tokens skip about 80% of the block's work, 6.8% of
    the tower's FLOPs. Parameters and their names are the original block's.
    """

    def forward(self, q_x: torch.Tensor, k_x: torch.Tensor | None = None,
                v_x: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        normed = self.ln_1(q_x)
        pooled = normed[:, :1]
        x = q_x[:, :1] + self.ls_1(self.attention(q_x=pooled, k_x=normed, v_x=normed,
                                                  attn_mask=attn_mask))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


def compute_pooled_token_only(model: nn.Module) -> bool:
    """Make the vision tower's last block a ``PooledTokenBlock`` in place, where the tower
    pools its class token and returns no other tokens (open_clip's plain ViTs); returns
    whether it did. Other towers (average or attention pooling, token outputs, cross
    attention, ResNets) are left as they are."""
    visual = getattr(model, "visual", None)
    if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None \
            or visual.pool_type != "tok" or visual.output_tokens \
            or not visual.transformer.batch_first:
        return False
    block = visual.transformer.resblocks[-1]
    if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
        return False
    block.__class__ = PooledTokenBlock  # same module, parameters and names
    return True


def load_model(
    spec: ModelSpec, device: torch.device | str = "cpu", unfused_attention: bool = True,
    pooled_token_only: bool = True,
) -> LoadedModel:
    """Create the model, its preprocessing and tokenizer, in eval mode on ``device``.

    With ``unfused_attention`` (the default) every ``nn.MultiheadAttention`` is replaced
    by the numerically equivalent ``core.lora.UnfusedMultiheadAttention``: LoRA needs the
    separate projections, and on CPU its SDPA path also encoded ViT-B-32 about 9%
    faster than the fused fast path (benchmarks/README.md). With ``pooled_token_only``
    (the default) the vision tower's last block computes the class token alone
    (``PooledTokenBlock``): image embeddings are unchanged; the tower's per-token
    outputs of that block (``output_tokens``, ``forward_intermediates``) are not there.

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
    if pooled_token_only:
        compute_pooled_token_only(model)
    return LoadedModel(
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(spec.name),
        spec=spec,
        device=device,
    )
