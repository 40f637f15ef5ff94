"""Training with generated images, the method of Zhang, Doughty & Snoek, "Low-Resource
Vision Challenges for Foundation Models" (CVPR 2024), for any backbone method: an
``adaptation_methods`` entry's ``generated:`` settings name a manifest of images made by
Stable Diffusion img2img from the training images (``core.generate`` makes them, or
users do elsewhere), and training then

- feeds a *label-preserving* variant (low strength) in place of its source with
  probability ``p``, its cross-entropy weighted ``preserving_weight``;
- adds an InfoNCE term: each sample's *label-breaking* variant (high strength) is pulled
  to its own source's image features and pushed from the batch's other sources, logits
  ``scale`` x cosine, weighted ``breaking_weight``.

Every draw comes from a generator seeded by (seed, step, slot), like the crops
(``core.augment``), so a resumed run draws the same images as an uninterrupted one.
Images are read by path only: the manifest's ``path`` is relative to ``root``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from clip_lora_pipeline.core.augment import sample_seed
from clip_lora_pipeline.core.backbone import SettingError, is_number
from clip_lora_pipeline.core.errors import UserError

logger = logging.getLogger(__name__)

KINDS = ("preserving", "breaking")
MANIFEST_COLUMNS = ("source", "kind", "strength", "path")
# The last number of a sample's seed for its generated-image draws: the crop's seed is
# (seed, step, slot); SeedSequence gives (..., 0) the stream of (...), so not 0.
_STREAM = 1


class GeneratedError(UserError, ValueError):
    """A generated-images manifest that training cannot use."""


@dataclass(frozen=True)
class GeneratedSettings:
    """``generated:`` in an ``adaptation_methods`` entry. Defaults are the paper code's
    (scripts/train_circuit.py: aug_prob 0.3, aug_weight 0.65, factor 80, lambda 0.1).
    ``root``: the folder the manifest's paths are relative to (``kedro run --pipeline
    augment`` writes the manifest into it). Required, as a dataset's root is: a folder
    named ``root`` is part of the training node's fingerprint, so new images retrain."""

    manifest: str = ""
    root: str = ""
    p: float = 0.3
    preserving_weight: float = 0.65
    breaking_weight: float = 0.1
    scale: float = 80.0

    def __post_init__(self) -> None:
        if not isinstance(self.manifest, str) or not self.manifest:
            raise SettingError(f"manifest must be the path of a generated-images manifest (CSV "
                               f"or Parquet: {', '.join(MANIFEST_COLUMNS)}); got "
                               f"{self.manifest!r}.")
        if not isinstance(self.root, str) or not self.root:
            raise SettingError(f"root must be the folder the manifest's paths are relative to; "
                               f"got {self.root!r}.")
        rules = {"p": (0 <= _number(self.p) <= 1, "a number in [0, 1]"),
                 "preserving_weight": (_number(self.preserving_weight) > 0, "a number > 0"),
                 "breaking_weight": (_number(self.breaking_weight) >= 0, "a number >= 0"),
                 "scale": (_number(self.scale) > 0, "a number > 0")}
        for key, (ok, allowed) in rules.items():
            if not ok:
                raise SettingError(f"{key} must be {allowed}; got {getattr(self, key)!r}.")


def _number(value) -> float:
    return float(value) if is_number(value) else float("nan")  # NaN fails every rule


def read_manifest(settings: GeneratedSettings) -> pd.DataFrame:
    """The manifest (CSV, or Parquet by its suffix), its columns and kinds checked."""
    path = Path(settings.manifest)
    if not path.is_file():
        raise GeneratedError(
            f"generated.manifest {path} does not exist. Make the images with `kedro run "
            f"--pipeline augment` (conf/base/parameters_augment.yml), or write a manifest "
            f"with columns {', '.join(MANIFEST_COLUMNS)}.")
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise GeneratedError(f"{path} has no column(s) {missing}; a generated-images manifest "
                             f"has {', '.join(MANIFEST_COLUMNS)}.")
    kinds = sorted(set(frame["kind"].astype(str)) - set(KINDS))
    if kinds:
        raise GeneratedError(f"{path}: kind {kinds} unknown; each row's kind is one of {KINDS}.")
    try:
        return frame.astype({"source": str, "kind": str, "path": str, "strength": float})
    except ValueError as exc:
        raise GeneratedError(f"{path}: the strength column must hold numbers ({exc}).") from None


@dataclass(frozen=True)
class BatchPlan:
    """What one step feeds: ``rows`` (draw slot, image index) for the batch's ``size``
    images, then its breaking images, then the sources of its replaced slots; the
    batch's loss ``weights``; the slot each breaking image and each source belongs to."""

    rows: list[tuple[int, int]]
    size: int
    weights: np.ndarray
    breaking_slots: np.ndarray
    source_slots: np.ndarray


class GeneratedImages:
    """The generated images of one training set: ``paths`` (absolute), numbered after
    the training images' own (image ``n_sources + k`` is ``paths[k]``), and per training
    image the numbers of its preserving and breaking variants."""

    def __init__(self, settings: GeneratedSettings, paths: list[str], source_of: np.ndarray,
                 preserving: list[np.ndarray], breaking: list[np.ndarray]):
        self.settings, self.paths, self.source_of = settings, paths, source_of
        self.preserving, self.breaking = preserving, breaking
        self.n_sources = len(preserving)

    @classmethod
    def for_training(cls, settings: GeneratedSettings, sources: Sequence[str]
                     ) -> GeneratedImages:
        """Those of ``sources`` (the training images' paths as the dataset manifest
        names them, which the generated manifest's ``source`` column repeats)."""
        frame = read_manifest(settings)
        frame = frame[frame["source"].isin(set(sources))].reset_index(drop=True)
        root = Path(settings.root)
        paths = [str(root / p) for p in frame["path"]]
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise GeneratedError(
                f"{len(missing)} image(s) that {settings.manifest} lists are not under {root}, "
                f"e.g. {missing[:3]}; generate them again (kedro run --pipeline augment) or set "
                f"generated.root to their folder.")
        positions: dict[str, list[int]] = {}
        for i, source in enumerate(sources):  # a few-shot sample may repeat an image
            positions.setdefault(source, []).append(i)
        lists: dict[str, list[list[int]]] = {kind: [[] for _ in sources] for kind in KINDS}
        for row, (source, kind) in enumerate(zip(frame["source"], frame["kind"])):
            for i in positions[source]:
                lists[kind][i].append(len(sources) + row)
        variants = {kind: [np.asarray(v, dtype=np.int64) for v in lists[kind]] for kind in KINDS}
        covered = sum(len(p) + len(b) > 0 for p, b in zip(*variants.values()))
        if not covered:
            raise GeneratedError(
                f"none of the {len(sources)} training images has a generated image in "
                f"{settings.manifest} (its source column names paths relative to the dataset "
                f"root, as the dataset manifest does); generate them for this dataset and "
                f"few-shot cell with `kedro run --pipeline augment`.")
        if covered < len(sources):
            logger.warning("generated images for %d of %d training images; the other %d "
                           "train on themselves only.", covered, len(sources),
                           len(sources) - covered)
        source_of = np.asarray([positions[s][0] for s in frame["source"]], dtype=np.int64)
        return cls(settings, paths, source_of, variants["preserving"], variants["breaking"])

    def counts(self) -> dict[str, int]:
        """How many generated images of each kind the training set has."""
        return {kind: len(np.unique(np.concatenate([np.zeros(0, np.int64),
                                                    *getattr(self, kind)])))
                for kind in KINDS}

    def fingerprint(self) -> str:
        """The images used (path, size, time written), for the checkpoint folder's name:
        a run with other or remade images starts afresh instead of resuming."""
        stats = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in self.paths]
        return hashlib.sha1(repr(stats).encode()).hexdigest()[:16]

    def plan(self, seed: int, step: int, indices: Sequence[int]) -> BatchPlan:
        """Each slot's draws (from its own generator): whether its preserving variant
        replaces it, which one, and which breaking variant joins the contrastive term.
        A slot that is fed as itself keeps the crop of the plain run (its draw slot)."""
        s, size = self.settings, len(indices)
        fed, weights, breaking, replaced = [], [], [], []
        for slot, index in enumerate(map(int, indices)):
            chance, pick, pick_breaking = np.random.default_rng(
                sample_seed(seed, step, slot, _STREAM)).random(3)
            options = self.preserving[index]
            swap = len(options) > 0 and chance < s.p
            fed.append((slot, int(options[int(pick * len(options))]) if swap else index))
            weights.append(s.preserving_weight if swap else 1.0)
            replaced += [slot] if swap else []
            options = self.breaking[index]
            if s.breaking_weight > 0 and len(options):
                breaking.append((slot, int(options[int(pick_breaking * len(options))])))
        # The contrastive term's sources: a replaced slot's own source, drawn as the plain
        # run would have fed it; none are needed without breaking images.
        sources = [(slot, int(indices[slot])) for slot in replaced] if breaking else []
        rows = fed + [(size + k, image) for k, (_, image) in enumerate(breaking)] + sources
        return BatchPlan(rows, size, np.asarray(weights), np.asarray([b for b, _ in breaking],
                         dtype=np.int64), np.asarray([b for b, _ in sources], dtype=np.int64))


class GeneratedBatch:
    """One step's generated part, on the training device: the images to encode with the
    batch (its breaking images, then the sources of its replaced slots) and what the
    loss needs. ``weights`` are scaled to average 1 over the whole batch, so micro-
    batches weighted by their share give the whole batch's weighted mean."""

    def __init__(self, images: torch.Tensor, weights: np.ndarray, breaking_slots: np.ndarray,
                 source_slots: np.ndarray, settings: GeneratedSettings):
        self.images, self.settings = images, settings
        self.weights_np, self.breaking_np, self.sources_np = weights, breaking_slots, source_slots
        device = images.device
        self.weights = torch.as_tensor(weights, dtype=torch.float32).to(device)
        self.breaking_slots = torch.as_tensor(breaking_slots).to(device)
        self.source_slots = torch.as_tensor(source_slots).to(device)

    @classmethod
    def from_plan(cls, plan: BatchPlan, images: torch.Tensor, settings: GeneratedSettings
                  ) -> GeneratedBatch:
        weights = plan.weights * (plan.size / plan.weights.sum())
        return cls(images, weights, plan.breaking_slots, plan.source_slots, settings)

    def chunk(self, rows: slice) -> GeneratedBatch:
        """The part of the micro-batch ``rows`` of the batch, its slots renumbered."""
        start, stop = rows.start, rows.stop
        keep_b = (self.breaking_np >= start) & (self.breaking_np < stop)
        keep_s = (self.sources_np >= start) & (self.sources_np < stop)
        m = len(self.breaking_np)
        picked = np.concatenate([np.flatnonzero(keep_b), m + np.flatnonzero(keep_s)])
        images = self.images[torch.as_tensor(picked, dtype=torch.long).to(self.images.device)]
        return GeneratedBatch(images, self.weights_np[rows], self.breaking_np[keep_b] - start,
                              self.sources_np[keep_s] - start, self.settings)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, features: torch.Tensor
             ) -> torch.Tensor:
        """The weighted cross-entropy of ``logits`` plus the weighted InfoNCE term;
        ``features``: the normalised image features of the batch, then of ``images``."""
        loss = (self.weights * F.cross_entropy(logits, labels, reduction="none")).mean()
        s, size, m = self.settings, len(labels), len(self.breaking_np)
        if s.breaking_weight == 0 or m == 0:
            return loss
        sources = features[:size].index_copy(0, self.source_slots, features[size + m:])
        return loss + s.breaking_weight * info_nce(features[size:size + m], sources,
                                                   self.breaking_slots, s.scale)


def info_nce(queries: torch.Tensor, keys: torch.Tensor, targets: torch.Tensor, scale: float
             ) -> torch.Tensor:
    """Cross-entropy of ``scale`` x cosine logits of each query against every key, the
    right key being ``targets``' (features already normalised)."""
    return F.cross_entropy(scale * queries.float() @ keys.float().T, targets)
