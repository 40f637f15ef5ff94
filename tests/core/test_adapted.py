"""The adapted model and its settings: an adaptation_methods entry is checked whole and
names the wrong key; the model stores peft's adapter state (LoRA) or the model's own
parameter names (BitFit), comes back from its artifact with the same logits, refuses
another layout, predicts without autograd in any batch size, and predicting through
core.predict builds no optimiser or gradient scaler."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from peft import get_peft_model_state_dict

from clip_lora_pipeline.core.adaptation_settings import adaptation_settings
from clip_lora_pipeline.core.adapted import AdaptedClip, load_clip
from clip_lora_pipeline.core.backbone_methods import BACKBONE_METHODS
from clip_lora_pipeline.core.images import load_rgb
from clip_lora_pipeline.core.lora import LoraSettings
from clip_lora_pipeline.core.models import TINY_MODEL
from clip_lora_pipeline.core.predict import logits_from_adapter
from tests.core.tiny import assert_close

MODEL = {"name": TINY_MODEL, "pretrained": None, "checkpoint": None}
RUNTIME = {"device": "cpu", "precision": "fp32", "batch_size": 4}
NAMES = ["red circle", "blue square", "green triangle"]


def _trained(entry: dict, seed: int = 1) -> AdaptedClip:
    """Built from ``entry``, its trainable tensors moved off their initialisation (LoRA's
    B starts at zero) as training would."""
    loaded, dtype = load_clip(MODEL, RUNTIME)
    adapted = AdaptedClip.from_settings(loaded, NAMES, adaptation_settings("x", entry), seed,
                                        dtype)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapted.trainable_parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return adapted


# Settings -------------------------------------------------------------------------
def test_defaults_are_clip_lora_and_the_filled_in_entry_round_trips():
    settings = adaptation_settings("lora", {})
    assert settings.method is BACKBONE_METHODS["lora"]
    assert settings.method_settings == LoraSettings()
    assert settings.train.total_steps(16) == 8000
    assert (settings.train.select, settings.train.seed) == ("last", None)
    assert settings.seeded(7).train.seed == 7
    assert settings.seeded(7).seeded(8).train.seed == 7  # a set seed wins
    assert adaptation_settings("lora", settings.params()) == settings
    assert {m.learns_on for m in BACKBONE_METHODS.values()} == {"images through the backbone"}


@pytest.mark.parametrize("path", ["conf/base/parameters_lora.yml",
                                  "conf/smoke/parameters_lora.yml"])
def test_the_configured_entries_are_valid(path):
    entries = OmegaConf.to_container(OmegaConf.load(path))["adaptation_methods"]
    for name, entry in entries.items():
        assert adaptation_settings(name, entry).method.name == entry["method"]


@pytest.mark.parametrize(("entry", "message"), [
    ([1, 2], r"^adaptation_methods\.x must map settings to values"),
    ({"learning_rate": 1.0},
     r"^adaptation_methods\.x\.learning_rate: unknown with method lora; .*'lora', 'lr'"),
    ({"method": "adapter"}, r"^adaptation_methods\.x\.method is 'adapter'; allowed: "
                            r"\['bitfit', .*'lora'.*\]"),
    ({"select": "best"}, r"^adaptation_methods\.x\.select must be one of \['last', "
                         r"'best_val'\]; got 'best'"),
    ({"patience": 3}, r"^adaptation_methods\.x\.patience needs select: best_val"),
    ({"select": "best_val", "eval_every": None},
     r"^adaptation_methods\.x\.select: best_val needs eval_every"),
    ({"lr": "2e-4"}, r"^adaptation_methods\.x\.lr must be a number > 0; got '2e-4'"),
    ({"batch_size": 32, "grad_accumulation": 3},
     r"^adaptation_methods\.x\.batch_size must be a multiple of grad_accumulation"),
    ({"crop_scale": [0.5]}, r"^adaptation_methods\.x\.crop_scale must be \[low, high\]"),
    ({"template": "a photo"}, r"^adaptation_methods\.x\.template must be a string with \{\}"),
    ({"lora": 4}, r"^adaptation_methods\.x\.lora must map settings to values"),
    ({"lora": {"rank": 4}},
     r"^adaptation_methods\.x\.lora\.rank: unknown; adaptation_methods\.x\.lora takes .*'r'"),
    ({"lora": {"r": 0}}, r"^adaptation_methods\.x\.lora\.r must be an integer >= 1; got 0"),
    ({"lora": {"matrices": ["q", "z"]}}, r"^adaptation_methods\.x\.lora\.matrices must be"),
    ({"method": "bitfit", "lora": {"r": 4}},
     r"^adaptation_methods\.x\.lora: unknown with method bitfit; .*'bitfit'"),
    ({"method": "bitfit", "bitfit": {"encoders": "image"}},
     r"^adaptation_methods\.x\.bitfit\.encoders must be one of"),
])
def test_a_wrong_key_or_value_anywhere_names_itself_and_what_is_allowed(entry, message):
    with pytest.raises(ValueError, match=message):
        adaptation_settings("x", entry)


# The model ------------------------------------------------------------------------
def test_lora_state_is_peft_adapter_state_dict():
    adapted = _trained({"lora": {"r": 4}})
    state = adapted.state()
    assert set(state) == set(get_peft_model_state_dict(adapted.backbone))
    assert all("lora_" in n and ".default." not in n for n in state)
    assert sum(t.numel() for t in state.values()) == sum(
        p.numel() for p in adapted.trainable_parameters())


@pytest.mark.parametrize("entry", [{"lora": {"r": 4}, "head": "linear"},
                                   {"method": "bitfit", "bitfit": {"layernorm": True}},
                                   {"method": "vpt", "vpt": {"depth": "deep"}, "head": "linear"}])
def test_the_artifact_gives_back_the_same_model(entry, few_images):
    root, frame = few_images
    adapted = _trained(entry)
    artifact = adapted.artifact(MODEL)
    restored = AdaptedClip.from_artifact(artifact, MODEL, RUNTIME)
    assert not restored.training and restored.class_names == NAMES
    paths = [str(root / p) for p in frame["path"]]
    assert_close(restored.predict(paths, restored.preprocess),
                 adapted.predict(paths, adapted.preprocess))
    untrained = AdaptedClip.from_settings(load_clip(MODEL, RUNTIME)[0], NAMES,
                                          adaptation_settings("x", entry), seed=1)
    diff = abs(untrained.predict(paths, untrained.preprocess) -
               adapted.predict(paths, adapted.preprocess))
    assert diff.max() > 1e-3  # so the comparison above can tell the states apart


def test_an_artifact_of_another_layout_or_model_is_refused():
    artifact = _trained({"lora": {"r": 4}}).artifact(MODEL)
    renamed = {**artifact, "tensors": {f"clip.{n}": t for n, t in artifact["tensors"].items()}}
    with pytest.raises(ValueError, match=r"not this model's trainable ones.*re-run training"):
        AdaptedClip.from_artifact(renamed, MODEL, RUNTIME)
    old = {**artifact, "config": {k: v for k, v in artifact["config"].items() if k != "format"}}
    with pytest.raises(ValueError, match="earlier version.*delete it and re-run training"):
        AdaptedClip.from_artifact(old, MODEL, RUNTIME)
    with pytest.raises(ValueError, match="re-run training for this model"):
        AdaptedClip.from_artifact(artifact, {**MODEL, "name": "ViT-B-32"}, RUNTIME)


def test_predict_builds_no_autograd_graph_and_matches_batches(few_images):
    root, frame = few_images
    adapted = _trained({"lora": {"r": 4}})
    adapted.train()
    grad_modes = []
    hook = adapted.clip.visual.register_forward_hook(
        lambda *_: grad_modes.append(torch.is_grad_enabled()))
    paths = [str(root / p) for p in frame["path"]]
    whole = adapted.predict(paths, adapted.preprocess, batch_size=64)
    hook.remove()
    assert grad_modes and not any(grad_modes)  # memory of one batch, not of the test set
    assert torch.is_grad_enabled() and adapted.training  # the mode it was in
    assert_close(adapted.predict(paths, adapted.preprocess, batch_size=2), whole)
    batch = torch.stack([adapted.preprocess(load_rgb(p)) for p in paths[:2]])
    assert_close(adapted.logits(batch).numpy(), whole[:2])


def test_predicting_builds_no_optimiser_or_scaler(few_images, monkeypatch):
    root, frame = few_images
    artifact = _trained({"lora": {"r": 4}, "head": "linear"}).artifact(MODEL)

    def refuse(*args, **kwargs):
        raise AssertionError("predicting built a training object")

    monkeypatch.setattr(torch.optim, "AdamW", refuse)
    monkeypatch.setattr(torch.amp, "GradScaler", refuse)
    logits, classes = logits_from_adapter(pd.DataFrame(frame), root, artifact, MODEL, RUNTIME)
    assert logits.shape == (len(frame), len(NAMES)) and classes == NAMES


def test_a_methods_training_defaults_apply_where_the_entry_sets_none(monkeypatch):
    from clip_lora_pipeline.core.bitfit import BitFit

    monkeypatch.setattr(BitFit, "train_defaults", {"lr": 0.5, "batch_size": 8})
    settings = adaptation_settings("x", {"method": "bitfit", "lr": 0.1})
    assert (settings.train.lr, settings.train.batch_size) == (0.1, 8)
    assert adaptation_settings("x", {"method": "lora"}).train.lr == 2e-4
