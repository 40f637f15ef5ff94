"""2SFS (two_stage): LayerNorm tuning is the base model at initialisation and merges into
the model's own LayerNorms; stage 2 starts its classifier from the stage-1 class
embeddings and leaves the LayerNorms alone; the method learns on generated shapes for
several seeds, resumes an interruption in either stage to the same result, comes back
from its artifact with the same logits, and names the settings it refuses."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip_lora_pipeline.core.adaptation_settings import adaptation_settings
from clip_lora_pipeline.core.adapted import AdaptedClip
from clip_lora_pipeline.core.attention import unfuse_attention
from clip_lora_pipeline.core.models import TINY_MODEL
from clip_lora_pipeline.core.report.methods import method_description
from clip_lora_pipeline.core.trainable import trainable_count
from clip_lora_pipeline.core.two_stage import (
    TwoStage,
    TwoStageSettings,
    fit_classifier,
    layernorm_names,
)
from tests.core.test_train import _adapted, _assert_same_state, _fit, _interrupted_at
from tests.core.tiny import assert_close, encode_both, fresh_tiny

MODEL = {"name": TINY_MODEL, "pretrained": None, "checkpoint": None}
RUNTIME = {"device": "cpu", "precision": "fp32", "batch_size": 8}
# The tiny random model learns in a test's budget at this rate (2SFS's 2e-4 would not
# move it; conf/smoke/parameters_lora.yml uses the same).
FAST = {"method": "two_stage", "lr": 1e-2}


def _tuned(encoders: str = "both"):
    model, _ = fresh_tiny()
    unfuse_attention(model)
    settings = TwoStageSettings(encoders=encoders)
    return TwoStage().attach(model, settings)


def test_layernorm_tuning_is_the_base_model_at_initialisation(inputs):
    images, tokens = inputs
    base = encode_both(fresh_tiny()[0], images, tokens)
    tuned = _tuned()
    trained = {n for n, p in tuned.named_parameters() if p.requires_grad}
    assert trained and all(".ln_tuning_layers." in n for n in trained)
    assert len(trained) == 2 * 11  # weight and bias of ln_pre, 2 x 2 blocks, ln_post, ln_final
    start = encode_both(tuned.base_model.model, images, tokens)
    assert_close(start[0], base[0])
    assert_close(start[1], base[1])
    vision = layernorm_names(fresh_tiny()[0], "vision")
    assert vision[0] == "visual.ln_pre" and all(n.startswith("visual.") for n in vision)
    model, _ = fresh_tiny()
    unfuse_attention(model)
    assert trainable_count("two_stage", model, {"encoders": "text"}) == 5 * 2 * 64


def test_the_merged_model_is_the_model_with_its_own_layernorms_changed(inputs):
    images, tokens = inputs
    base_model = fresh_tiny()[0]
    base = encode_both(base_model, images, tokens)
    tuned = _tuned()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in (p for p in tuned.parameters() if p.requires_grad):
            param.add_(0.3 * torch.randn(param.shape, generator=generator))
    adapted = encode_both(tuned.base_model.model, images, tokens)
    assert not torch.allclose(adapted[0], base[0], atol=1e-3)
    merged = TwoStage().merged(tuned)
    unfuse_attention(base_model)
    assert merged.state_dict().keys() == base_model.state_dict().keys()
    exported = encode_both(merged, images, tokens)
    assert_close(exported[0], adapted[0])
    assert_close(exported[1], adapted[1])


@pytest.mark.parametrize(("entry", "message"), [
    ({"head": "text"}, r"^adaptation_methods\.x\.head must be linear \(stage 2 fits the "
                       r"linear head\) with method two_stage; got 'text'"),
    ({"select": "best_val"}, r"^adaptation_methods\.x\.select must be last .* with method "
                             r"two_stage; got 'best_val'"),
    ({"text_alignment_weight": 0.5}, r"^adaptation_methods\.x\.text_alignment_weight must be 0"),
    ({"two_stage": {"stage1_fraction": 1}},
     r"^adaptation_methods\.x\.two_stage\.stage1_fraction must be a number in \(0, 1\)"),
    ({"two_stage": {"encoders": "image"}},
     r"^adaptation_methods\.x\.two_stage\.encoders must be one of \('vision', 'text', 'both'\)"),
    ({"lora": {"r": 4}}, r"^adaptation_methods\.x\.lora: unknown with method two_stage; .*"
                         r"'two_stage'"),
])
def test_a_setting_two_stage_cannot_follow_names_itself_and_what_is_allowed(entry, message):
    with pytest.raises(ValueError, match=message):
        adaptation_settings("x", {"method": "two_stage", **entry})


def test_the_defaults_are_2sfs():
    settings = adaptation_settings("x", {"method": "two_stage"})
    assert (settings.train.head, settings.train.total_steps(16)) == ("linear", 300 * 16)
    assert settings.method_settings == TwoStageSettings("both", 0.6)
    assert adaptation_settings("x", settings.params()) == settings
    assert [TwoStage().loop_steps(settings.method_settings, n) for n in (4800, 10, 2)] == \
        [2880, 6, 1]
    line = method_description("two_stage", {"method": "two_stage", "lr": 1e-3})
    assert line.startswith("2SFS: the LayerNorms of the default encoders") and "default" in line
    line = method_description("2sfs", {"method": "two_stage", "two_stage": {"stage1_fraction": 0.5}})
    assert "first 50% of the steps" in line


def _val_accuracy(adapted, shapes) -> float:
    paths, labels = shapes["val"]
    return float((adapted.predict(paths, adapted.preprocess).argmax(1) == labels).mean())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_stage_learns_for_every_seed(shapes, seed):
    adapted = _adapted(shapes, seed=seed, max_steps=40, eval_every=24, **FAST)
    assert adapted.linear is None  # stage 1 trains through the text head
    untrained = _val_accuracy(adapted, shapes)
    ln_before = {n: t.clone() for n, t in adapted.state().items()}
    result = _fit(adapted, shapes)
    history = result.history
    assert history["step"].tolist() == list(range(1, 41)) and result.steps_done == 40
    final = _val_accuracy(adapted, shapes)
    assert final == pytest.approx(history["val_accuracy"].iloc[-1]) and final >= untrained + 0.2
    # stage 2 restarts the cosine schedule at the entry's lr, on a head of classes x width
    assert history["lr"][23] == pytest.approx(1e-6)  # stage 1's schedule ends at min_lr
    assert history["lr"][24] == pytest.approx(1e-2, rel=0.05)
    stage2 = history["loss"].to_numpy()[24:]
    assert stage2[-6:].mean() < stage2[:6].mean()
    state = adapted.state()
    assert state["linear.weight"].shape == (6, 32)
    assert result.trainable_parameters == 1408 + 6 * 32
    assert any(not torch.equal(state[n], ln_before[n]) for n in ln_before)


def test_stage_2_starts_from_the_stage_1_class_embeddings_and_leaves_the_model(shapes):
    adapted = _adapted(shapes, max_steps=4, eval_every=None, **{**FAST, "lr": 1e-9})
    layernorms = copy.deepcopy(adapted.state())
    text = adapted.text_features().detach()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    classifier, rows = fit_classifier(adapted, iter([(0, images, labels)]), 1)
    assert_close(F.normalize(classifier, dim=-1), text, rtol=1e-6)  # one step of 1e-9 from it
    assert [r["step"] for r in rows] == [1] and np.isfinite(rows[0]["loss"])
    _assert_same_state_dict(adapted.state(), layernorms)
    rows, trained = TwoStage().after_loop(adapted, iter([(0, images, labels)]), 1)
    assert trained == 6 * 32 and torch.all(adapted.linear.bias == 0)
    with torch.no_grad():  # the installed head is 100 x cosine with the classifier
        features = F.normalize(adapted.clip.encode_image(images), dim=-1)
    assert_close(adapted.logits(images).numpy(), (100 * features @ text.T).numpy(), rtol=1e-5)


def _assert_same_state_dict(actual, expected):
    assert actual.keys() == expected.keys()
    for name, value in actual.items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)


@pytest.mark.parametrize("stop", [5, 10])  # in stage 1 (7 steps), and in stage 2
def test_an_interruption_in_either_stage_resumes_to_the_same_result(shapes, tmp_path, stop):
    settings = {**FAST, "max_steps": 12, "eval_every": 6, "checkpoint_every": 3}
    straight = _adapted(shapes, **settings)
    expected = _fit(straight, shapes, checkpoint_dir=tmp_path / "a")
    with pytest.raises(KeyboardInterrupt), _interrupted_at(stop):
        _fit(_adapted(shapes, **settings), shapes, checkpoint_dir=tmp_path / "b")
    again = _adapted(shapes, **settings)
    resumed = _fit(again, shapes, checkpoint_dir=tmp_path / "b")
    np.testing.assert_allclose(resumed.history["loss"], expected.history["loss"], rtol=1e-5)
    assert resumed.history["val_accuracy"].iloc[-1] == expected.history["val_accuracy"].iloc[-1]
    _assert_same_state(again, straight)
    # and once more: a finished run's checkpoint takes stage 2 again, to the same head
    third = _adapted(shapes, **settings)
    _fit(third, shapes, checkpoint_dir=tmp_path / "b")
    _assert_same_state(third, straight)


def test_the_artifact_gives_back_the_same_model_and_its_export(shapes):
    adapted = _adapted(shapes, max_steps=6, eval_every=None, **FAST)
    _fit(adapted, shapes)
    artifact = adapted.artifact(MODEL)
    assert {"linear.weight", "linear.bias"} <= set(artifact["tensors"])
    assert all("ln_tuning_layers" in n for n in artifact["tensors"] if not n.startswith("linear."))
    restored = AdaptedClip.from_artifact(artifact, MODEL, RUNTIME)
    paths = shapes["val"][0][:8]
    assert_close(restored.predict(paths, restored.preprocess),
                 adapted.predict(paths, adapted.preprocess))
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        merged = restored.merged().eval()
        assert_close(merged.encode_image(images), restored.clip.encode_image(images))
