"""The training augmentation (core.augment) against torchvision's recipe, and the pixel
cache's decoding (core.pixel_cache)."""

from __future__ import annotations

import functools
from dataclasses import astuple

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.stats import ks_2samp

from clip_lora_pipeline.core.augment import ATTEMPTS, Augmentation, Draw, sample_seed
from clip_lora_pipeline.core.pixel_cache import decode_for_training, stored_size

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's
STD = (0.26862954, 0.26130258, 0.27577711)
AUG = Augmentation(224, SCALE, MEAN, STD)
DRAWS = 10_000
SAME, DIFFERENT = 1e-3, 1e-6  # KS p-value: same distribution above, a wrong one below


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth, photo-like H x W x 3 uint8 image: gradients, waves and noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([255 * x / width, 255 * y / height,
                     128 + 100 * np.sin(x / 17 + y / 23)], axis=-1)
    noise = np.random.default_rng(seed).normal(0, 12, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


@functools.cache
def torchvision_boxes(height: int, width: int) -> np.ndarray:
    """(top, left, height, width) of DRAWS crops from torchvision's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        image = torch.empty(3, height, width)
        return np.array([T.RandomResizedCrop.get_params(image, list(SCALE), list(RATIO))
                         for _ in range(DRAWS)])


@functools.cache
def our_boxes(height: int, width: int, scale=SCALE) -> np.ndarray:
    """The crops of DRAWS samples (slots of one step), each from its own generator."""
    aug = Augmentation(224, scale, MEAN, STD)
    return np.array([astuple(aug.draw(0, 0, slot, height, width))[:4]
                     for slot in range(DRAWS)])


def uniform_aspect_boxes(height: int, width: int) -> np.ndarray:
    """A wrong recipe the statistics must catch: torchvision's, with the aspect ratio
    uniform instead of log-uniform."""
    rng, rows = np.random.default_rng(2), np.arange(DRAWS)
    target = height * width * rng.uniform(*SCALE, (DRAWS, ATTEMPTS))
    aspect = rng.uniform(*RATIO, (DRAWS, ATTEMPTS))
    w, h = np.round(np.sqrt(target * aspect)), np.round(np.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.argmax(axis=1)
    h, w = h[rows, first], w[rows, first]
    room_h, room_w = np.maximum(height - h + 1, 1), np.maximum(width - w + 1, 1)
    top, left = rng.integers(0, room_h), rng.integers(0, room_w)
    boxes = np.stack([top, left, h, w], axis=1).astype(np.int64)
    return np.where(fits[rows, first][:, None], boxes, _fallback_box(height, width))


def statistics(boxes: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
    top, left, h, w = boxes.T
    drawn = ~np.all(boxes == _fallback_box(height, width), axis=1)
    return {
        "area": h * w / (height * width),
        "aspect": w / h,
        # Position within the room left, in (0, 1), for the crops that have room.
        "top": ((top + 0.5) / (height - h + 1))[drawn & (h < height)],
        "left": ((left + 0.5) / (width - w + 1))[drawn & (w < width)],
        "fallback": np.float64(1 - drawn.mean()),
    }


def _fallback_box(height: int, width: int) -> np.ndarray:
    """torchvision's centre crop after ten failed tries."""
    in_ratio = width / height
    if in_ratio < min(RATIO):
        w, h = width, round(width / min(RATIO))
    elif in_ratio > max(RATIO):
        h, w = height, round(height * max(RATIO))
    else:
        h, w = height, width
    return np.array([(height - h) // 2, (width - w) // 2, h, w])


@pytest.mark.parametrize("height, width", [(375, 500), (800, 200), (64, 64)])
def test_draws_match_torchvision_statistics(height, width):
    """Crops drawn from a generator per sample are distributed as torchvision's, drawn
    one after another from the global RNG."""
    ref = statistics(torchvision_boxes(height, width), height, width)
    got = statistics(our_boxes(height, width), height, width)
    for key in ("area", "aspect", "top", "left"):
        assert len(got[key]) > DRAWS / 2
        assert ks_2samp(got[key], ref[key]).pvalue > SAME, key
    # Tall 800 x 200 falls back to the centre crop in ~12% of draws, the others never.
    assert got["fallback"] == pytest.approx(ref["fallback"], abs=0.02)
    assert (ref["fallback"] > 0.1) == (height == 800)


@pytest.mark.parametrize("height, width", [(375, 500), (800, 200)])
def test_statistics_reject_a_wrong_distribution(height, width):
    """The same tests fail for a narrower scale or a uniform (not log-uniform) ratio."""
    ref = statistics(torchvision_boxes(height, width), height, width)
    narrow = statistics(our_boxes(height, width, scale=(0.5, 1.0)), height, width)
    assert ks_2samp(narrow["area"], ref["area"]).pvalue < DIFFERENT
    uniform = statistics(uniform_aspect_boxes(height, width), height, width)
    assert ks_2samp(uniform["aspect"], ref["aspect"]).pvalue < DIFFERENT


def test_draw_is_torchvisions_crop_and_flip_from_the_samples_seed():
    image = torch.empty(3, 800, 200)  # extreme aspect: fallbacks too
    for slot in range(100):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(4, 9, slot))
            box = T.RandomResizedCrop.get_params(image, list(SCALE), list(RATIO))
            flip = bool(torch.rand(1) < 0.5)  # RandomHorizontalFlip's draw
        assert AUG.draw(4, 9, slot, 800, 200) == Draw(*box, flip=flip)


@pytest.mark.parametrize("height, width", [(375, 500), (800, 200), (64, 64)])
def test_crop_matches_pil_bicubic_resized_crop_and_flip(height, width):
    array = photo(height, width)
    image, pil = chw(array), Image.fromarray(array)
    flipped = 0
    for slot in range(8):
        draw = AUG.draw(0, 0, slot, height, width)
        got = AUG.crop(image, draw)
        assert got.dtype == torch.uint8 and got.shape == (3, 224, 224)
        ref = TF.resized_crop(pil, draw.top, draw.left, draw.height, draw.width, [224, 224],
                              T.InterpolationMode.BICUBIC)
        ref = chw(np.asarray(TF.hflip(ref) if draw.flip else ref))
        flipped += draw.flip
        diff = (got.int() - ref.int()).abs()
        # Measured: mean 0.01-0.28 levels, max 4 (rounding of the two kernels).
        assert diff.float().mean() < 0.5 and diff.max() <= 8
    assert 0 < flipped < 8


def test_crop_of_a_channels_last_view_equals_a_contiguous_one():
    array = photo(375, 500)
    draw = AUG.draw(1, 2, 3, 375, 500)
    view = torch.from_numpy(array).permute(2, 0, 1)  # as the pixel cache keeps it
    torch.testing.assert_close(AUG.crop(view, draw), AUG.crop(view.contiguous(), draw),
                               rtol=0, atol=0)


def test_finish_normalises_as_torchvision():
    crops = torch.stack([chw(photo(224, 224, seed)) for seed in range(4)])
    got = AUG.finish(crops)
    for crop, out in zip(crops, got):
        pil = Image.fromarray(crop.permute(1, 2, 0).numpy())
        ref = TF.normalize(TF.to_tensor(pil), MEAN, STD)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert got.dtype == torch.float32


def test_batch_is_crop_then_finish():
    images = [chw(photo(h, w, i)) for i, (h, w) in enumerate([(375, 500), (800, 200)])]
    draws = [AUG.draw(3, 7, slot, *image.shape[1:]) for slot, image in enumerate(images)]
    crops = torch.stack([AUG.crop(i, d) for i, d in zip(images, draws)])
    torch.testing.assert_close(AUG.batch(images, draws), AUG.finish(crops), rtol=0, atol=0)


def test_draw_is_deterministic_per_seed_step_and_slot():
    assert AUG.draw(5, 3, 2, 375, 500) == AUG.draw(5, 3, 2, 375, 500)
    draws = {AUG.draw(seed, step, slot, 375, 500)
             for seed in range(2) for step in range(10) for slot in range(10)}
    assert len(draws) == 200  # no two (seed, step, slot) give the same crop
    flips = [AUG.draw(0, 0, slot, 375, 500).flip for slot in range(200)]
    assert 60 < sum(flips) < 140


def test_stored_size_shrinks_only_beyond_twice_the_input_size():
    assert stored_size(1000, 448, 224) == (1000, 448)  # shorter side exactly 2x: kept
    assert stored_size(300, 400, 224) == (300, 400)
    assert stored_size(1000, 600, 224) == (747, 448)
    assert stored_size(600, 1200, 224) == (448, 896)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_decode_for_training(tmp_path, suffix):
    small, large = tmp_path / f"small{suffix}", tmp_path / f"large{suffix}"
    Image.fromarray(photo(400, 900)).save(small)  # shorter side 400 <= 448: kept
    Image.fromarray(photo(600, 1000)).save(large)  # shorter side 600 > 448: shrunk
    kept = decode_for_training(str(small), 224)
    assert kept.dtype == torch.uint8 and kept.shape == (3, 400, 900)
    assert torch.equal(kept, chw(np.asarray(Image.open(small).convert("RGB"))))
    shrunk = decode_for_training(str(large), 224)
    assert shrunk.shape == (3, 448, 747)
    ref = Image.open(large).convert("RGB").resize((747, 448), Image.Resampling.BICUBIC)
    assert torch.equal(shrunk, chw(np.asarray(ref)))
