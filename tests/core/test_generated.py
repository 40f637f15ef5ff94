"""Training with generated images (core.generated): the settings and manifest checks, the
replacement draw (its probability over many draws, its choice, seeded per sample), the
loss terms against a hand computation (the preserving weight, InfoNCE of breaking images
against their sources), a breaking weight of 0 giving the plain run's loss, identical
batches from the cache and the files, and an interrupted run resuming exactly.

The "generated" images here are simple edits of the synthetic shapes (brighter, darker,
inverted, rotated): the loss and the draws do not depend on how they were made. The tiny
Stable Diffusion that makes real ones is tested in tests/core/test_generate.py and
tests/pipelines/augment."""

from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

from clip_lora_pipeline.core.adaptation_settings import adaptation_settings
from clip_lora_pipeline.core.adapted import AdaptedClip
from clip_lora_pipeline.core.augment import Augmentation
from clip_lora_pipeline.core.batches import EpochBatches
from clip_lora_pipeline.core.distributed import Ranks
from clip_lora_pipeline.core.generated import (
    GeneratedBatch,
    GeneratedError,
    GeneratedImages,
    GeneratedSettings,
)
from clip_lora_pipeline.core.model_id import ModelSpec
from clip_lora_pipeline.core.models import TINY_MODEL, load_model
from clip_lora_pipeline.core.train import TrainingLoop
from clip_lora_pipeline.core.train_inputs import InputSettings, TrainingBatches
from clip_lora_pipeline.core.training_step import training_loss
from tests.core.conftest import generated_shapes
from tests.core.tiny import assert_close

EDITS = {"preserving": [lambda im: ImageEnhance.Brightness(im).enhance(1.2),
                        lambda im: ImageEnhance.Brightness(im).enhance(0.8)],
         "breaking": [ImageOps.invert, lambda im: im.rotate(90)]}
FAST = {"lr": 5e-3, "batch_size": 8, "eval_every": 4, "checkpoint_every": 4,
        "crop_scale": [0.5, 1.0], "lora": {"r": 4, "alpha": 8, "dropout": 0.1}}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """16 training and 8 validation shapes; two preserving and two breaking variants of
    each training image (48 px, unlike the 32 px sources), listed in a CSV manifest."""
    root = tmp_path_factory.mktemp("shapes")
    manifest = generated_shapes(root, 4, 6, 32).sample(frac=1.0, random_state=0)
    train, val = manifest.iloc[:16], manifest.iloc[16:]
    folder = tmp_path_factory.mktemp("generated")
    rows = []
    for source in train["path"]:
        image = Image.open(root / source).convert("RGB").resize((48, 48))
        for kind, edits in EDITS.items():
            for k, edit in enumerate(edits):
                path = f"{kind}/{source}/{k}.png"
                (folder / path).parent.mkdir(parents=True, exist_ok=True)
                edit(image).save(folder / path)
                rows.append({"source": source, "kind": kind,
                             "strength": 0.3 if kind == "preserving" else 0.7, "path": path})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    names = manifest.drop_duplicates("label").sort_values("label")["class_name"].tolist()
    return {"root": root, "train": train, "val": val, "names": names,
            "manifest": str(folder / "manifest.csv"), "generated": str(folder)}


def _settings(shapes, **generated) -> GeneratedSettings:
    return GeneratedSettings(manifest=shapes["manifest"], root=shapes["generated"], **generated)


def _adapted(shapes, generated=None, **overrides) -> AdaptedClip:
    entry = {**FAST, **overrides}
    if generated is not None:
        entry["generated"] = {"manifest": shapes["manifest"], "root": shapes["generated"],
                              **generated}
    return AdaptedClip.from_settings(load_model(ModelSpec(TINY_MODEL)), shapes["names"],
                                     adaptation_settings("test", entry), seed=1)


def _fit(adapted, shapes, steps, **kwargs):
    root, train, val = shapes["root"], shapes["train"], shapes["val"]
    settings = adapted.settings.generated
    generated = settings and GeneratedImages.for_training(settings, train["path"].tolist())
    return TrainingLoop(adapted).fit(
        [str(root / p) for p in train["path"]], train["label"].tolist(),
        [str(root / p) for p in val["path"]], val["label"].to_numpy(), adapted.preprocess,
        steps, generated=generated, **kwargs)


# Settings and manifest ------------------------------------------------------------------
def test_settings_sit_under_generated_and_errors_name_the_key(shapes):
    entry = {"method": "bitfit", "generated": {"manifest": "m.csv", "root": "g"}}
    settings = adaptation_settings("mine", entry)
    assert settings.generated == GeneratedSettings("m.csv", "g", 0.3, 0.65, 0.1, 80.0)
    # stored in the adapter's config and read back (predict rebuilds the entry)
    assert adaptation_settings("mine", settings.params()).generated == settings.generated
    assert "generated" not in adaptation_settings("mine", {"method": "bitfit"}).params()
    for bad, match in [({"p": 1.5}, r"mine\.generated\.p must be"),
                       ({"scale": 0}, r"mine\.generated\.scale must be"),
                       ({"weight": 1}, r"mine\.generated\.weight: unknown"),
                       ({"manifest": None}, r"mine\.generated\.manifest must be the path"),
                       ({"root": ""}, r"mine\.generated\.root must be the folder")]:
        with pytest.raises(ValueError, match=match):
            adaptation_settings("mine", {"generated": {"manifest": "m.csv", "root": "g",
                                                       **bad}})


def test_manifest_errors_name_the_file_and_the_fix(shapes, tmp_path):
    sources = shapes["train"]["path"].tolist()
    with pytest.raises(GeneratedError, match="does not exist.*--pipeline augment"):
        GeneratedImages.for_training(GeneratedSettings(str(tmp_path / "none.csv"), "g"), sources)
    frame = pd.read_csv(shapes["manifest"])
    bad = tmp_path / "bad.csv"
    frame.drop(columns="kind").to_csv(bad, index=False)
    with pytest.raises(GeneratedError, match=r"bad.csv has no column\(s\) \['kind'\]"):
        GeneratedImages.for_training(GeneratedSettings(str(bad), str(tmp_path)), sources)
    frame.assign(kind="other").to_csv(bad, index=False)
    with pytest.raises(GeneratedError, match="kind.*'other'.*unknown"):
        GeneratedImages.for_training(GeneratedSettings(str(bad), str(tmp_path)), sources)
    frame.to_csv(bad, index=False)  # its paths are relative to another folder
    with pytest.raises(GeneratedError, match="not under .*generated.root"):
        GeneratedImages.for_training(GeneratedSettings(str(bad), str(tmp_path)), sources)
    with pytest.raises(GeneratedError, match="none of the 2 training images"):
        GeneratedImages.for_training(_settings(shapes), ["a.png", "b.png"])
    found = GeneratedImages.for_training(_settings(shapes), sources[:3] + ["new.png"])
    assert found.counts() == {"preserving": 6, "breaking": 6}
    assert [len(v) for v in found.preserving] == [2, 2, 2, 0]


# The draws ------------------------------------------------------------------------------
def _fake(n=4, p=0.3, breaking_weight=0.1) -> GeneratedImages:
    """n training images with 5 preserving and 3 breaking variants each (no files)."""
    preserving = [np.arange(n + 8 * i, n + 8 * i + 5) for i in range(n)]
    breaking = [np.arange(n + 8 * i + 5, n + 8 * i + 8) for i in range(n)]
    return GeneratedImages(GeneratedSettings("m.csv", "g", p=p, breaking_weight=breaking_weight),
                           [f"g{k}.png" for k in range(8 * n)], np.repeat(np.arange(n), 8),
                           preserving, breaking)


def test_a_preserving_variant_replaces_its_source_with_probability_p():
    generated, draws = _fake(), 5000
    fed, weights, rows_per_step = [], [], []
    for step in range(draws // 4):
        plan = generated.plan(seed=3, step=step, indices=[0, 1, 2, 3])
        fed += [index for _, index in plan.rows[:4]]
        weights += plan.weights.tolist()
        rows_per_step.append(plan)
    fed, weights = np.asarray(fed), np.asarray(weights)
    replaced = fed >= 4
    # 5000 draws: the binomial's standard deviation is 0.0065; 4 of them
    assert abs(replaced.mean() - 0.3) < 0.026
    assert set(weights[replaced]) == {0.65} and set(weights[~replaced]) == {1.0}
    slots = np.tile(np.arange(4), draws // 4)
    assert ((fed[replaced] - 4) // 8 == slots[replaced]).all()  # a variant of its own source
    counts = np.bincount((fed[replaced] - 4) % 8, minlength=5)
    assert counts.min() > 0.8 * counts.mean()  # any of the five, evenly
    for plan in rows_per_step[:50]:
        # each slot's breaking variant (draw slots 4..7), then each replaced slot's own
        # source, drawn from the slot it would have been fed from
        assert [slot for slot, _ in plan.rows[4:8]] == [4, 5, 6, 7]
        assert all((index - 4) // 8 == b and (index - 4) % 8 >= 5
                   for (_, index), b in zip(plan.rows[4:8], plan.breaking_slots))
        assert plan.rows[8:] == [(s, s) for s in plan.source_slots]
        assert list(plan.source_slots) == [s for s, (_, i) in enumerate(plan.rows[:4]) if i >= 4]
    again = generated.plan(seed=3, step=7, indices=[0, 1, 2, 3])
    assert again.rows == rows_per_step[7].rows  # seeded by (seed, step, slot): a resume
    assert generated.plan(seed=4, step=7, indices=[0, 1, 2, 3]).rows != again.rows


def test_p_zero_and_breaking_weight_zero_feed_the_plain_batch():
    plan = _fake(p=0.0, breaking_weight=0.0).plan(seed=3, step=2, indices=[3, 1, 0])
    assert plan.rows == [(0, 3), (1, 1), (2, 0)] and plan.weights.tolist() == [1.0] * 3
    assert len(plan.breaking_slots) == len(plan.source_slots) == 0
    always = _fake(p=1.0).plan(seed=3, step=2, indices=[3, 1, 0])
    assert all(index >= 4 for _, index in always.rows[:3])


# The loss -------------------------------------------------------------------------------
def _features(adapted, images):
    with torch.no_grad():
        return F.normalize(adapted.clip.encode_image(images).float(), dim=-1)


def test_loss_is_weighted_cross_entropy_plus_info_nce_against_the_sources(shapes):
    adapted = _adapted(shapes).eval()  # no dropout: separate encodings give the same features
    torch.manual_seed(0)
    fed, breaking, source = torch.randn(4, 3, 32, 32), torch.randn(2, 3, 32, 32), \
        torch.randn(1, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 3])
    # slot 2 fed a preserving variant (weight 0.65) and its own source kept for the
    # contrastive term; slots 0 and 2 have breaking images
    weights = np.array([1.0, 1.0, 0.65, 1.0])
    settings = _settings(shapes)
    batch = GeneratedBatch(torch.cat([breaking, source]), weights * 4 / weights.sum(),
                           np.array([0, 2]), np.array([2]), settings)
    loss, correct = training_loss(adapted, fed, labels, batch)

    with torch.no_grad():
        logits = adapted(fed)[0]
    ce = F.cross_entropy(logits, labels, reduction="none").numpy()
    weighted = (weights * ce).sum() / weights.sum()
    sources = _features(adapted, fed)
    sources[2] = _features(adapted, source)[0]
    contrastive = F.cross_entropy(80.0 * _features(adapted, breaking) @ sources.T,
                                  torch.tensor([0, 2]))
    assert_close(float(loss.detach()), weighted + 0.1 * float(contrastive))
    assert int(correct) == int((logits.argmax(1) == labels).sum())
    assert float(contrastive) > 0.01  # the term is there to be weighed

    no_breaking = GeneratedBatch(torch.cat([breaking, source]), weights * 4 / weights.sum(),
                                 np.array([0, 2]), np.array([2]),
                                 _settings(shapes, breaking_weight=0.0))
    assert_close(float(training_loss(adapted, fed, labels, no_breaking)[0].detach()), weighted)
    plain = GeneratedBatch(fed[:0], np.ones(4), np.zeros(0, np.int64), np.zeros(0, np.int64),
                           _settings(shapes, breaking_weight=0.0))
    assert_close(float(training_loss(adapted, fed, labels, plain)[0].detach()),
                 float(training_loss(adapted, fed, labels)[0].detach()))


def test_micro_batches_add_up_to_the_whole_batch_weighted_loss(shapes):
    torch.manual_seed(0)
    logits, labels = torch.randn(10, 4), torch.randint(0, 4, (10,))
    weights = np.where(np.arange(10) % 3 == 0, 0.65, 1.0)
    whole = GeneratedBatch(torch.zeros(0, 3, 32, 32), weights * 10 / weights.sum(),
                           np.zeros(0, np.int64), np.zeros(0, np.int64), _settings(shapes))
    total = sum(share * float(whole.chunk(chunk).loss(logits[chunk], labels[chunk], None))
                for chunk, share in [(slice(0, 4), 0.4), (slice(4, 8), 0.4), (slice(8, 10), 0.2)])
    ce = F.cross_entropy(logits, labels, reduction="none").numpy()
    assert_close(total, (weights * ce).sum() / weights.sum())


# Training -------------------------------------------------------------------------------
def _batches(shapes, generated, ranks=Ranks(), **settings):
    root, train = shapes["root"], shapes["train"]
    augmentation = Augmentation(32, (0.5, 1.0), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    inputs = TrainingBatches([str(root / p) for p in train["path"]], train["label"].tolist(),
                             augmentation, EpochBatches(len(train), 8, 5), torch.device("cpu"),
                             InputSettings(**settings), generated, ranks)
    return inputs, list(inputs.steps(0, 3))


def test_cache_and_files_give_identical_batches_with_generated_images(shapes):
    generated = GeneratedImages.for_training(_settings(shapes, p=0.5),
                                             shapes["train"]["path"].tolist())
    cache, cached = _batches(shapes, generated, pixel_cache_mb=64)
    files, decoded = _batches(shapes, generated, num_workers=2, pixel_cache_mb=0)
    assert cache.cached and not files.cached
    for (_, x, y, g), (_, x2, y2, g2) in zip(cached, decoded):
        assert x.shape == (8, 3, 32, 32) and torch.equal(y, y2)
        torch.testing.assert_close(x2, x, rtol=0, atol=0)
        torch.testing.assert_close(g2.images, g.images, rtol=0, atol=0)
        assert len(g.images) == 8 + len(g.sources_np)  # a breaking image per slot
        np.testing.assert_array_equal(g2.weights_np, g.weights_np)
    _, plain = _batches(shapes, None, pixel_cache_mb=64)
    fed_itself = cached[0][3].weights_np == cached[0][3].weights_np.max()
    assert 0 < fed_itself.sum() < 8  # p 0.5: some slots replaced
    # a slot fed as itself gets the plain run's crop
    torch.testing.assert_close(cached[0][1][fed_itself], plain[0][1][fed_itself], rtol=0, atol=0)


def test_each_training_process_takes_its_share_of_a_batch_with_generated_images(shapes):
    """Several processes (core.distributed): each cuts its share of the whole batch as a
    micro-batch is cut, with the whole batch's loss weights."""
    generated = GeneratedImages.for_training(_settings(shapes, p=0.5),
                                             shapes["train"]["path"].tolist())
    _, whole = _batches(shapes, generated, pixel_cache_mb=64)
    shares = [_batches(shapes, generated, Ranks(rank, 3), pixel_cache_mb=0)[1]
              for rank in range(3)]
    for step, (_, x, y, g) in enumerate(whole):
        parts = [share[step] for share in shares]
        torch.testing.assert_close(torch.cat([p[1] for p in parts]), x, rtol=0, atol=0)
        assert torch.equal(torch.cat([p[2] for p in parts]), y)
        for rank, (_, _, _, part) in enumerate(parts):
            expected = g.chunk(Ranks(rank, 3).part(len(y)))  # 2, 3 and 3 of the 8
            torch.testing.assert_close(part.images, expected.images, rtol=0, atol=0)
            np.testing.assert_array_equal(part.weights_np, expected.weights_np)
            np.testing.assert_array_equal(part.breaking_np, expected.breaking_np)
            np.testing.assert_array_equal(part.sources_np, expected.sources_np)
        assert sum(len(p[3].weights_np) for p in parts) == 8


def test_breaking_weight_zero_and_p_zero_train_as_the_plain_run(shapes):
    plain = _fit(_adapted(shapes), shapes, 6)
    off = _fit(_adapted(shapes, {"p": 0.0, "breaking_weight": 0.0}), shapes, 6)
    np.testing.assert_allclose(off.history["loss"], plain.history["loss"], rtol=1e-5)
    on = _fit(_adapted(shapes, {"p": 0.5}), shapes, 6)
    assert not np.allclose(on.history["loss"], plain.history["loss"], rtol=1e-3)


@contextlib.contextmanager
def _interrupted_at(step: int):
    real = TrainingBatches.steps

    def steps(self, start, stop):
        for batch in real(self, start, stop):
            if batch[0] + 1 == step:
                raise KeyboardInterrupt
            yield batch

    with mock.patch.object(TrainingBatches, "steps", steps):
        yield


def test_an_interrupted_run_with_generated_images_resumes_exactly(shapes, tmp_path):
    generated = {"p": 0.5}
    straight = _adapted(shapes, generated)
    expected = _fit(straight, shapes, 12, checkpoint_dir=tmp_path / "a")
    with pytest.raises(KeyboardInterrupt), _interrupted_at(7):
        _fit(_adapted(shapes, generated), shapes, 12, checkpoint_dir=tmp_path / "b")
    resumed_model = _adapted(shapes, generated)
    resumed = _fit(resumed_model, shapes, 12, checkpoint_dir=tmp_path / "b")
    assert resumed.steps_done == 12
    np.testing.assert_allclose(resumed.history["loss"], expected.history["loss"], rtol=1e-5)
    for name, value in straight.state().items():
        torch.testing.assert_close(resumed_model.state()[name], value)


def test_the_report_line_says_the_entry_trains_with_generated_images():
    from clip_lora_pipeline.core.report.methods import method_description

    entry = {"method": "bitfit", "generated": {"manifest": "m.csv", "root": "g", "p": 0.5}}
    line = method_description("bitfit_generated", entry)
    assert line.startswith("BitFit") and "\n" not in line
    assert all(part in line for part in ("img2img", "p=0.5", "rest default")), line
    assert "img2img" not in method_description("bitfit", {"method": "bitfit"})
