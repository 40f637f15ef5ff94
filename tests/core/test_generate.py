"""Making generated images (core.generate) with a tiny random Stable Diffusion saved in
diffusers' layout and loaded from its folder like real weights: the images land where
the manifest says, each from its own generator, so a rerun makes only those missing and
an interrupted run keeps what it made; the errors name the parameter and the fix.

4 inference steps, not the default 50: img2img denoises int(steps x strength) steps,
and 2 x 0.3 is none, which diffusers refuses (and so do the settings)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from clip_lora_pipeline.core.generate import (
    GenerateSettings,
    GenerationError,
    Job,
    check_folder,
    generate,
    jobs_for,
    list_generated,
    load_img2img,
)
from tests.conftest import write_image
from tests.core.tiny_sd import IMAGE_SIZE, save_tiny_sd

SETTINGS = GenerateSettings(model_path="unused", steps=4, samples=2, breaking_strengths=(0.8,),
                            image_size=IMAGE_SIZE)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    pytest.importorskip("diffusers")
    return save_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two source images of other sizes, under a dataset root."""
    root = tmp_path_factory.mktemp("dataset")
    write_image(root / "circle" / "a.png", size=(40, 28), seed=1)
    write_image(root / "square" / "b.jpg", size=(24, 24), seed=2)
    return root, [("circle/a.png", "red circle"), ("square/b.jpg", "blue square")]


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def test_settings_errors_name_the_parameter():
    for params, match in [({"steps": 2}, r"augment\.steps x strength must reach 1"),
                          ({"prompt": "a photo"}, r"augment\.prompt must be a string with \{\}"),
                          ({"image_size": 30}, r"augment\.image_size must be a multiple of 8"),
                          ({"breaking_strengths": [0.7, 1.5]}, r"augment\.breaking_strengths"),
                          ({"sample": 3}, r"augment\.sample: unknown")]:
        with pytest.raises(ValueError, match=match):
            GenerateSettings.from_params(params)
    defaults = GenerateSettings.from_params(None)  # the paper code's
    assert (defaults.guidance, defaults.steps, defaults.samples, defaults.image_size,
            defaults.preserving_strength, defaults.breaking_strengths, defaults.seed) == (
        5.0, 50, 5, 512, 0.3, (0.6, 0.7, 0.8), 42)


def test_model_path_errors_name_the_parameter_and_the_fix(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"augment\.model_path is not set.*diffusers' layout"):
        load_img2img(None, CPU, torch.float32)
    with pytest.raises(ValueError, match=r"augment\.model_path .*missing does not exist"):
        load_img2img(str(tmp_path / "missing"), CPU, torch.float32)
    (tmp_path / "sd.ckpt").mkdir()
    with pytest.raises(ValueError, match=r"not a diffusers pipeline folder \(no model_index"):
        load_img2img(str(tmp_path / "sd.ckpt"), CPU, torch.float32)
    (tmp_path / "sd.ckpt" / "model_index.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if not installed
    with pytest.raises(GenerationError, match=r"pip install 'clip_lora_pipeline\[augment\]'"):
        load_img2img(str(tmp_path / "sd.ckpt"), CPU, torch.float32)


def test_jobs_name_their_image_and_seed_it_alone():
    jobs = jobs_for([("cats/a.jpg", "cat"), ("dogs/b.png", "dog"), ("cats/a.jpg", "cat")],
                    GenerateSettings(samples=2))
    assert len(jobs) == 2 * 2 * 4  # each source once; preserving + 3 breaking strengths
    assert Job("cats/a.jpg", "cat", "preserving", 0.3, 1).path == "preserving/0.3/cats/a.jpg/1.png"
    assert len({job.path for job in jobs}) == len({job.seed(42) for job in jobs}) == len(jobs)
    assert jobs[0].seed(42) != jobs[0].seed(43)


def test_images_are_made_once_each_from_its_own_generator(tiny_sd, sources, tmp_path):
    root, pairs = sources
    pipe = load_img2img(str(tiny_sd), CPU, torch.float32)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"  # the paper's sampler
    jobs = jobs_for(pairs, SETTINGS)
    folder = tmp_path / "generated"
    assert generate(pipe, jobs, root, folder, SETTINGS) == 8
    table = list_generated(folder)
    assert sorted(table["path"]) == sorted(job.path for job in jobs)
    assert table.groupby(["source", "kind", "strength"]).size().to_dict() == {
        ("circle/a.png", "breaking", 0.8): 2, ("circle/a.png", "preserving", 0.3): 2,
        ("square/b.jpg", "breaking", 0.8): 2, ("square/b.jpg", "preserving", 0.3): 2}
    first = {job.path: _pixels(folder / job.path) for job in jobs}
    assert all(image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) for image in first.values())
    assert not np.array_equal(*[first[job.path] for job in jobs[:2]])  # two samples differ

    # A rerun makes only what is missing, and that image as it was made in its batch
    # (one pixel level of slack: a batch of one may round differently).
    lost = folder / jobs[1].path
    lost.unlink()
    others = {job.path: (folder / job.path).stat().st_mtime_ns for job in jobs[2:]}
    assert generate(pipe, jobs, root, folder, SETTINGS) == 1
    assert np.abs(_pixels(lost) - first[jobs[1].path]).max() <= 1
    assert others == {job.path: (folder / job.path).stat().st_mtime_ns for job in jobs[2:]}

    # An interrupted run keeps the images it finished; no partial file is left behind.
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return pipe(*args, **kwargs)

    again = tmp_path / "again"
    with pytest.raises(KeyboardInterrupt):
        generate(interrupted, jobs, root, again, SETTINGS)
    assert len(list_generated(again)) == 2
    assert not [p for p in again.rglob("*") if p.name.startswith(".")]
    assert generate(pipe, jobs, root, again, SETTINGS) == 6
    for job in jobs:
        assert np.abs(_pixels(again / job.path) - first[job.path]).max() <= 1

    # Images made with other settings are not mixed with new ones.
    with pytest.raises(GenerationError, match=r"other settings \(\['prompt'\].*output_dir"):
        check_folder(folder, GenerateSettings(**{**SETTINGS.__dict__, "prompt": "a {}"}))
