"""LoRA's variants from peft (DoRA, VeRA, IA3) as lora settings: each is the base model
at initialisation, merges to what it computes, learns on generated shapes with the tiny
model for several seeds, resumes an interrupted run to the same result, refuses the
settings it has no use for, and is described in the report; the trainable counts
follow each variant's formula."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from peft import get_peft_model

from clip_lora_pipeline.core.adaptation_settings import adaptation_settings
from clip_lora_pipeline.core.attention import unfuse_attention
from clip_lora_pipeline.core.dropout import FastDropout
from clip_lora_pipeline.core.lora import LoraSettings, peft_config, target_module_names
from clip_lora_pipeline.core.report.methods import method_description
from clip_lora_pipeline.core.trainable import trainable_count
from tests.core.test_train import _adapted, _assert_same_state, _fit, _interrupted_at
from tests.core.tiny import assert_close, encode_both, fresh_tiny

# What each variant adds, by peft's parameter names.
PARTS = {"dora": "lora_magnitude_vector", "vera": "vera_lambda_b", "ia3": "ia3_l"}
ALL = ("q", "k", "v", "o", "mlp")
# The tiny model learns in a test's budget with these (CLIP-LoRA's r=2, lr 2e-4 would not
# move it; conf/smoke/parameters_lora.yml uses the same).
FAST = {"dora": ({"variant": "dora", "r": 4, "alpha": 8, "dropout": 0.1}, 5e-3),
        "vera": ({"variant": "vera", "r": 64, "dropout": 0.1}, 5e-2),
        "ia3": ({"variant": "ia3", "matrices": ["q", "k", "v", "mlp"]}, 3e-2)}


def _wrapped(variant: str, matrices=ALL):
    model, _ = fresh_tiny()
    unfuse_attention(model)
    settings = LoraSettings(variant=variant, matrices=matrices)
    return get_peft_model(model, peft_config(model, settings))


@pytest.mark.parametrize("variant", ["dora", "vera", "ia3"])
def test_at_initialisation_each_variant_is_the_base_model(inputs, variant):
    images, tokens = inputs
    base = encode_both(fresh_tiny()[0], images, tokens)
    wrapped = _wrapped(variant)
    trained = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trained and all(PARTS[variant] in n or "lora_" in n or "vera_" in n for n in trained)
    assert any(PARTS[variant] in n for n in trained)
    start = encode_both(wrapped.base_model.model, images, tokens)
    assert_close(start[0], base[0])
    assert_close(start[1], base[1])


@pytest.mark.parametrize("variant", ["dora", "vera", "ia3"])
def test_the_merged_model_computes_what_the_adapter_computes(inputs, variant):
    images, tokens = inputs
    base = encode_both(fresh_tiny()[0], images, tokens)
    wrapped = _wrapped(variant)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # stand-in for training: move every trained tensor
        for param in (p for p in wrapped.parameters() if p.requires_grad):
            param.add_(0.2 * torch.randn(param.shape, generator=generator))
    adapted = encode_both(wrapped.base_model.model, images, tokens)
    assert not torch.allclose(adapted[0], base[0], atol=1e-3)
    merged = copy.deepcopy(wrapped).merge_and_unload()
    assert not any(part in n for n, _ in merged.named_parameters()
                   for part in ("lora_", "vera_", "ia3_"))
    exported = encode_both(merged, images, tokens)
    assert_close(exported[0], adapted[0], rtol=1e-4)
    assert_close(exported[1], adapted[1], rtol=1e-4)


def test_trainable_counts_follow_each_variants_formula():
    """Per targeted layer: LoRA r x (in + out), DoRA also out (the magnitude), VeRA r +
    out (its vectors; the shared projections are frozen), IA3 out, or the MLP's hidden
    width on c_proj."""
    width, hidden, layers = 64, 256, 12  # the tiny model: 2 towers x 2 blocks x q, k, v

    def count(settings):
        model, _ = fresh_tiny()
        unfuse_attention(model)
        return trainable_count("lora", model, settings)

    assert count({"r": 2}) == layers * 2 * (width + width)
    assert count({"variant": "dora", "r": 2}) == layers * (2 * 2 * width + width)
    assert count({"variant": "vera", "r": 8}) == layers * (8 + width)
    assert count({"variant": "ia3"}) == layers * width
    assert count({"variant": "ia3", "matrices": ["v", "mlp"]}) == 4 * (width + hidden)
    with pytest.raises(ValueError, match=r"no backbone method 'adapter'; registered: \["):
        trainable_count("adapter", fresh_tiny()[0])


def test_ia3_rescales_the_mlps_hidden_activations_once():
    model, _ = fresh_tiny()
    unfuse_attention(model)
    names = target_module_names(model, LoraSettings(variant="ia3", matrices=("mlp",)))
    assert names == [f"{tower}resblocks.{b}.mlp.c_proj" for tower in
                     ("visual.transformer.", "transformer.") for b in (0, 1)]
    layer = _wrapped("ia3", ("q", "mlp")).base_model.model.transformer.resblocks[0]
    assert layer.mlp.c_proj.is_feedforward and layer.mlp.c_proj.ia3_l["default"].numel() == 256
    assert not layer.attn.q_proj.is_feedforward


def test_veras_dropout_is_the_fast_one_on_cpu(shapes):
    adapted = _adapted(shapes, lora={"variant": "vera", "dropout": 0.25})
    layer = adapted.clip.visual.transformer.resblocks[0].attn.q_proj
    assert isinstance(layer.vera_dropout["default"], FastDropout)


@pytest.mark.parametrize(("lora", "message"), [
    ({"variant": "qlora"}, r"^adaptation_methods\.x\.lora\.variant must be one of \('lora', "
                           r"'dora', 'vera', 'ia3'\); got 'qlora'"),
    ({"variant": "vera", "alpha": 8},
     r"^adaptation_methods\.x\.lora\.alpha is not used by variant vera \(.*\); got 8\. "
     r"Leave alpha, rslora out, or pick variant lora or dora\."),
    ({"variant": "vera", "rslora": False}, r"^adaptation_methods\.x\.lora\.rslora is not used"),
    ({"variant": "ia3", "r": 4}, r"^adaptation_methods\.x\.lora\.r is not used by variant ia3 "
                                 r"\(IA3 only rescales .*\); got 4\. Leave r, alpha, rslora, "
                                 r"dropout out"),
    ({"variant": "ia3", "dropout": 0.1}, r"^adaptation_methods\.x\.lora\.dropout is not used"),
])
def test_a_setting_a_variant_cannot_use_names_itself_and_what_is_allowed(lora, message):
    with pytest.raises(ValueError, match=message):
        adaptation_settings("x", {"lora": lora})


def test_a_variants_filled_in_entry_round_trips():
    for variant in ("dora", "vera", "ia3"):
        settings = adaptation_settings("x", {"lora": {"variant": variant}})
        assert adaptation_settings("x", settings.params()) == settings


@pytest.mark.parametrize("variant", ["dora", "vera", "ia3"])
def test_the_report_names_the_variant(variant):
    line = method_description(variant, {"method": "lora", "lora": FAST[variant][0]})
    assert line.startswith({"dora": "DoRA:", "vera": "VeRA:", "ia3": "IA3:"}[variant]), line
    shown = {"dora": ["r=4", "alpha=8"], "vera": ["r=64", "dropout=0.1"], "ia3": ["q+k+v+mlp"]}
    assert all(part in line for part in shown[variant]), line
    assert (variant == "ia3") == ("r=" not in line)  # IA3 has no rank


def _val_accuracy(adapted, shapes) -> float:
    paths, labels = shapes["val"]
    return float((adapted.predict(paths, adapted.preprocess).argmax(1) == labels).mean())


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("variant", ["dora", "vera", "ia3"])
def test_each_variant_learns_for_every_seed(shapes, variant, seed):
    lora, lr = FAST[variant]
    adapted = _adapted(shapes, seed=seed, lora=lora, lr=lr, max_steps=30, eval_every=30)
    untrained = _val_accuracy(adapted, shapes)
    result = _fit(adapted, shapes)
    loss = result.history["loss"].to_numpy()
    assert loss[-10:].mean() < 0.5 * loss[:10].mean()
    assert result.best_val_accuracy >= untrained + 0.2


@pytest.mark.parametrize("variant", ["dora", "vera", "ia3"])
def test_an_interrupted_variant_resumes_to_the_same_result(shapes, tmp_path, variant):
    lora, lr = FAST[variant]
    settings = {"lora": lora, "lr": lr, "max_steps": 12, "eval_every": 6, "checkpoint_every": 4}
    straight = _adapted(shapes, **settings)
    expected = _fit(straight, shapes, checkpoint_dir=tmp_path / "a")
    with pytest.raises(KeyboardInterrupt), _interrupted_at(10):
        _fit(_adapted(shapes, **settings), shapes, checkpoint_dir=tmp_path / "b")
    again = _adapted(shapes, **settings)
    resumed = _fit(again, shapes, checkpoint_dir=tmp_path / "b")
    np.testing.assert_allclose(resumed.history["loss"], expected.history["loss"], rtol=1e-5)
    _assert_same_state(again, straight)
    assert any(PARTS[variant] in name for name in again.state())
