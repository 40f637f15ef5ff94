"""Making the generated images ``core.generated`` trains with: each training image
redrawn by Stable Diffusion img2img (diffusers' ``StableDiffusionImg2ImgPipeline``) from
its class prompt, at a low strength (label-preserving variants) and at high strengths
(label-breaking ones), as in Zhang, Doughty & Snoek (CVPR 2024). Their defaults
(img2img_circuit.py and the README of their code): guidance 5, 50 DDIM steps with
eta 0, the image resized to 512 x 512, 5 samples per image, strength 0.3 preserving and
0.6-0.8 breaking, seed 42.

The images go to ``<folder>/<kind>/<strength>/<source path>/<sample>.png``, each written
atomically from a generator of its own, so a rerun skips those already there and an
interrupted run loses only the images in flight; ``list_generated`` lists the folder.
diffusers and transformers are the optional extra ``[augment]``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from clip_lora_pipeline.core.atomic import atomic_path
from clip_lora_pipeline.core.augment import sample_seed
from clip_lora_pipeline.core.backbone import is_int, is_number
from clip_lora_pipeline.core.errors import SettingsError, UserError
from clip_lora_pipeline.core.generated import KINDS
from clip_lora_pipeline.core.images import load_rgb

logger = logging.getLogger(__name__)

EXTRA = "pip install 'clip_lora_pipeline[augment]'"
SETTINGS_FILE = "generation.json"  # beside the images: what made them


class GenerationError(UserError, RuntimeError):
    """Images cannot be generated as asked (model folder, extra, earlier images)."""


@dataclass(frozen=True)
class GenerateSettings:
    """The ``augment`` parameters (conf/base/parameters_augment.yml)."""

    model_path: str | None = None  # a local diffusers folder of Stable Diffusion
    output_dir: str = "data/01_raw/generated"  # images under <output_dir>/<dataset>/
    prompt: str = "a photo of a {}."
    guidance: float = 5.0
    steps: int = 50
    preserving_strength: float = 0.3
    breaking_strengths: tuple[float, ...] = (0.6, 0.7, 0.8)
    samples: int = 5
    image_size: int = 512
    seed: int = 42

    def __post_init__(self) -> None:
        rules = {
            "model_path": (self.model_path is None or isinstance(self.model_path, str),
                           "null or the path of a local diffusers folder"),
            "output_dir": (isinstance(self.output_dir, str) and self.output_dir != "", "a folder"),
            "prompt": (isinstance(self.prompt, str) and "{}" in self.prompt,
                       "a string with {} where the class name goes"),
            "guidance": (is_number(self.guidance) and self.guidance >= 1, "a number >= 1"),
            "steps": (is_int(self.steps) and self.steps >= 1, "an integer >= 1"),
            "preserving_strength": (_strength(self.preserving_strength), "a number in (0, 1]"),
            "breaking_strengths": (isinstance(self.breaking_strengths, tuple)
                                   and all(map(_strength, self.breaking_strengths)),
                                   "a list of numbers in (0, 1]"),
            "samples": (is_int(self.samples) and self.samples >= 1, "an integer >= 1"),
            "image_size": (is_int(self.image_size) and self.image_size >= 8
                           and self.image_size % 8 == 0, "a multiple of 8"),
            "seed": (is_int(self.seed), "an integer"),
        }
        for key, (ok, allowed) in rules.items():
            if not ok:
                raise SettingsError(f"augment.{key} must be {allowed}; got "
                                    f"{getattr(self, key)!r}.")
        strengths = (self.preserving_strength, *self.breaking_strengths)
        if int(self.steps * min(strengths)) < 1:
            # img2img denoises int(steps x strength) steps; diffusers refuses zero
            raise SettingsError(f"augment.steps x strength must reach 1 denoising step; "
                                f"{self.steps} x {min(strengths)} does not: raise augment.steps.")

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> GenerateSettings:
        from clip_lora_pipeline.core.settings import from_params

        return from_params(cls, params, "augment", SettingsError)

    def identity(self) -> dict[str, Any]:
        """What decides an image's pixels (not which or how many are made)."""
        kept = ("model_path", "prompt", "guidance", "steps", "image_size", "seed")
        return {k: v for k, v in asdict(self).items() if k in kept}


def _strength(value: Any) -> bool:
    return is_number(value) and 0 < value <= 1


@dataclass(frozen=True)
class Job:
    """One generated image: its source (relative to the dataset root), class name, kind,
    strength, sample number, and its path relative to the images folder."""

    source: str
    class_name: str
    kind: str
    strength: float
    sample: int

    @property
    def path(self) -> str:
        return str(PurePosixPath(self.kind, f"{self.strength:g}", self.source,
                                 f"{self.sample}.png"))

    def seed(self, seed: int) -> int:
        digest = int(hashlib.sha256(self.source.encode()).hexdigest()[:16], 16)
        return sample_seed(seed, digest, KINDS.index(self.kind), round(self.strength * 1000),
                           self.sample + 1)


def jobs_for(sources: Iterable[tuple[str, str]], settings: GenerateSettings) -> list[Job]:
    """Every image to make for (source path, class name) pairs, each source once."""
    strengths = [("preserving", settings.preserving_strength)] + [
        ("breaking", s) for s in settings.breaking_strengths]
    return [Job(source, name, kind, strength, k)
            for source, name in dict(sources).items()
            for kind, strength in strengths for k in range(settings.samples)]


def load_img2img(model_path: str | None, device: torch.device, dtype: torch.dtype):
    """diffusers' img2img pipeline from a local folder, with the DDIM sampler the
    paper's script uses. Errors name ``augment.model_path`` and the fix."""
    if not model_path:
        raise SettingsError("augment.model_path is not set: set it to a local Stable "
                            "Diffusion folder in diffusers' layout (model_index.json, unet/, "
                            "vae/, text_encoder/, tokenizer/, scheduler/).")
    folder = Path(model_path)
    if not folder.is_dir():
        raise SettingsError(f"augment.model_path {folder} does not exist (or is not a folder); "
                            "set it to a local Stable Diffusion folder in diffusers' layout.")
    if not (folder / "model_index.json").is_file():
        raise SettingsError(f"augment.model_path {folder} is not a diffusers pipeline folder (no "
                            "model_index.json); save the model with save_pretrained, or "
                            "download one in that layout (e.g. stable-diffusion-v1-5).")
    try:
        import transformers  # noqa: F401  (the text encoder and tokenizer)
        from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline
    except ImportError as exc:
        raise GenerationError(f"generating images needs diffusers and transformers ({exc}); "
                              f"install the extra: {EXTRA}") from None
    try:
        with warnings.catch_warnings():  # newer diffusers call it dtype; 0.30 knows only this
            warnings.filterwarnings("ignore", "`torch_dtype` is deprecated", FutureWarning)
            pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
                folder, torch_dtype=dtype, local_files_only=True,
                # the paper's CompVis script has no safety checker either
                safety_checker=None, requires_safety_checker=False)
    except (OSError, ValueError, TypeError) as exc:
        raise SettingsError(f"augment.model_path {folder}: diffusers cannot load a Stable "
                            f"Diffusion img2img pipeline from it: {exc}") from None
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)  # one bar over all images instead
    return pipe.to(device)


def check_folder(folder: Path, settings: GenerateSettings) -> None:
    """Refuse to use or add to images that were made with other settings."""
    record = folder / SETTINGS_FILE
    if not record.is_file():
        return
    made, wanted = json.loads(record.read_text()), settings.identity()
    if made != wanted:
        changed = sorted(k for k in wanted if made.get(k) != wanted[k])
        raise GenerationError(
            f"the images in {folder} were generated with other settings ({changed}: "
            f"{[made.get(k) for k in changed]}, now {[wanted[k] for k in changed]}); "
            "delete that folder, or set augment.output_dir elsewhere.")


def generate(pipe, jobs: list[Job], root: Path, folder: Path, settings: GenerateSettings
             ) -> int:
    """Make the images of ``jobs`` not yet in ``folder`` (sources under ``root``), one
    pipeline call per (source, kind, strength); returns how many were made."""
    missing = [job for job in jobs if not (folder / job.path).is_file()]
    check_folder(folder, settings)
    if missing and not (folder / SETTINGS_FILE).is_file():  # the first images: what made them
        with atomic_path(folder / SETTINGS_FILE) as staging:
            staging.write_text(json.dumps(settings.identity(), indent=2))
    logger.info("generate: %d of %d images to make in %s (%d already there)", len(missing),
                len(jobs), folder, len(jobs) - len(missing))
    groups: dict[tuple[str, str, float], list[Job]] = {}
    for job in missing:
        groups.setdefault((job.source, job.kind, job.strength), []).append(job)
    size = (settings.image_size, settings.image_size)
    with tqdm(total=len(jobs), initial=len(jobs) - len(missing), desc="Generating images",
              unit="image") as bar:
        for (source, _, strength), group in groups.items():
            # The paper's load_img: any size to 512 x 512, LANCZOS.
            image = load_rgb(root / source).resize(size, Image.Resampling.LANCZOS)
            out = pipe(prompt=[settings.prompt.format(group[0].class_name)] * len(group),
                       image=[image] * len(group), strength=strength,
                       guidance_scale=settings.guidance, num_inference_steps=settings.steps,
                       # CPU generators: the same noise, so the same images, on any device
                       generator=[torch.Generator().manual_seed(j.seed(settings.seed))
                                  for j in group]).images
            for job, made in zip(group, out):
                with atomic_path(folder / job.path) as staging:
                    made.save(staging, format="PNG")
            bar.update(len(group))
    return len(missing)


def list_generated(folder: Path) -> pd.DataFrame:
    """Every generated image under ``folder`` (source, kind, strength, path), read from
    the layout ``generate`` writes, sorted by path."""
    rows = []
    for kind in KINDS:
        for file in sorted((folder / kind).rglob("*.png")):
            parts = file.relative_to(folder).parts
            # a source's own folder may end in .png; staging files start with '.'
            if len(parts) < 4 or file.name.startswith(".") or not file.is_file():
                continue
            rows.append({"source": "/".join(parts[2:-1]), "kind": kind,
                         "strength": float(parts[1]), "path": "/".join(parts)})
    frame = pd.DataFrame(rows, columns=["source", "kind", "strength", "path"])
    return frame.sort_values("path", ignore_index=True)
