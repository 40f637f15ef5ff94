"""VPT: the prompts sit right after the class token (at the first block, or every block
when deep) with the paper's uniform initialisation; the text tower and, once detached,
the image tower compute what they did; pooling reads the class token, with or without
the pooled-token last block; settings errors name their key; it learns on generated
shapes for several seeds, shallow and deep, and resumes an interrupted run exactly."""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
import torch
from open_clip.transformer import ResidualAttentionBlock

from clip_lora_pipeline.core.adaptation_settings import adaptation_settings
from clip_lora_pipeline.core.adapted import AdaptedClip
from clip_lora_pipeline.core.backbone_methods import BACKBONE_METHODS
from clip_lora_pipeline.core.model_id import ModelSpec
from clip_lora_pipeline.core.models import TINY_MODEL, load_model
from clip_lora_pipeline.core.pooled_block import PooledTokenBlock
from clip_lora_pipeline.core.report.methods import method_description
from clip_lora_pipeline.core.train import TrainingLoop
from clip_lora_pipeline.core.train_inputs import TrainingBatches
from clip_lora_pipeline.core.vpt import Vpt, VptSettings, prompt_bound
from tests.core.tiny import assert_close

GRID = 16  # the tiny model's 32 x 32 images in 8 x 8 patches
WIDTH = 64


def _tiny(pooled_token_only: bool = True):
    loaded = load_model(ModelSpec(TINY_MODEL), pooled_token_only=pooled_token_only)
    return loaded.model, loaded.tokenizer


def _attached(model, seed: int = 0, **settings):
    torch.manual_seed(seed)
    return Vpt().attach(model, VptSettings(**settings))


def _block_inputs(model) -> list[torch.Tensor]:
    """What each vision block receives, filled in as the model runs (hooks registered
    after VPT's see the prompts it put in)."""
    seen = []
    for block in model.visual.transformer.resblocks:
        block.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    return seen


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# Where the prompts go --------------------------------------------------------------
@pytest.mark.parametrize("depth", ["shallow", "deep"])
def test_prompts_follow_the_class_token_with_the_papers_initialisation(depth, images):
    base, _ = _tiny()
    with torch.no_grad():
        plain = _block_inputs(base)
        base.encode_image(images)
    model, _ = _tiny()
    attached = _attached(model, depth=depth, length=4)
    seen = _block_inputs(model)
    with torch.no_grad():
        model.encode_image(images)
    prompts = attached.prompts
    assert prompts.shape == (2 if depth == "deep" else 1, 4, WIDTH)
    assert [p for p, _ in attached.named_parameters() if _.requires_grad] == ["prompts"]
    # uniform in [-v, v], v = sqrt(6 / (3 * patch area + width)) (KMnP/vpt)
    bound = math.sqrt(6 / (3 * 8 * 8 + WIDTH))
    assert prompt_bound(model.visual) == pytest.approx(bound)
    assert prompts.abs().max() <= bound and prompts.abs().max() > 0.9 * bound
    first = seen[0]
    assert first.shape == (3, 1 + 4 + GRID, WIDTH)
    torch.testing.assert_close(first[:, :1], plain[0][:, :1], rtol=0, atol=0)
    torch.testing.assert_close(first[:, 1:5], prompts[0].expand(3, -1, -1), rtol=0, atol=0)
    torch.testing.assert_close(first[:, 5:], plain[0][:, 1:], rtol=0, atol=0)
    # deep: the second block's own prompts replace what the first made of the first's
    second = seen[1][:, 1:5]
    if depth == "deep":
        torch.testing.assert_close(second, prompts[1].expand(3, -1, -1), rtol=0, atol=0)
    else:
        assert not torch.allclose(second, prompts[0].expand(3, -1, -1), atol=1e-3)


def test_the_text_tower_is_untouched_and_detaching_restores_the_image_tower(images):
    base, tokenizer = _tiny()
    tokens = tokenizer(["a photo of a red circle.", "a blue square"])
    with torch.no_grad():
        image, text = base.encode_image(images), base.encode_text(tokens)
    model, _ = _tiny()
    attached = _attached(model, depth="deep")
    assert not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), text, rtol=0, atol=0)
        assert not torch.allclose(model.encode_image(images), image, atol=1e-3)
        assert attached.detach() is model
        torch.testing.assert_close(model.encode_image(images), image, rtol=0, atol=0)


@pytest.mark.parametrize("depth", ["shallow", "deep"])
def test_pooling_reads_the_class_token_and_the_prompts_leave_the_output(depth, images):
    model, _ = _tiny(pooled_token_only=False)
    _attached(model, depth=depth)
    visual = model.visual
    last = []
    visual.transformer.resblocks[-1].register_forward_hook(
        lambda _m, _a, out: last.append(out.detach()))
    visual.output_tokens = True
    with torch.no_grad():
        pooled, tokens = visual(images)
    assert last[0].shape[1] == 1 + 5 + GRID  # the last block still saw the prompts
    assert tokens.shape == (3, GRID, WIDTH)  # the patches' tokens alone come out
    assert_close(pooled, visual.ln_post(last[0][:, 0]) @ visual.proj)
    assert_close(tokens, visual.ln_post(last[0][:, 6:]))


@pytest.mark.parametrize("depth", ["shallow", "deep"])
def test_the_pooled_token_block_gives_the_same_class_token(depth, images):
    outputs, last_blocks = [], []
    for pooled_token_only in (True, False):
        model, _ = _tiny(pooled_token_only)
        attached = _attached(model, seed=3, depth=depth)
        with torch.no_grad():  # trained-looking prompts, the same in both models
            attached.prompts.normal_(0, 1, generator=torch.Generator().manual_seed(1))
            outputs.append(model.encode_image(images))
        last_blocks.append(type(model.visual.transformer.resblocks[-1]))
    assert last_blocks == [PooledTokenBlock, ResidualAttentionBlock]
    assert_close(outputs[0], outputs[1])


def test_the_state_is_the_prompts_and_refuses_other_shapes():
    method = Vpt()
    deep = _attached(_tiny()[0], depth="deep")
    state = method.state(deep)
    assert list(state) == ["prompts"] and state["prompts"].shape == (2, 5, WIDTH)
    shallow = _attached(_tiny()[0])
    with pytest.raises(ValueError, match=r"shape \(2, 5, 64\), this model's \(1, 5, 64\)"):
        method.load_state(shallow, state)
    assert not method.mergeable
    with pytest.raises(TypeError, match="cannot be merged"):
        method.merged(deep)


# Settings --------------------------------------------------------------------------
def test_defaults_are_the_papers_and_the_entry_round_trips():
    settings = adaptation_settings("vpt", {"method": "vpt"})
    assert settings.method is BACKBONE_METHODS["vpt"]
    assert settings.method_settings == VptSettings("shallow", 5, 0.0)
    assert settings.train.lr == 2e-4  # the project's AdamW default (see Vpt's docstring)
    assert adaptation_settings("vpt", settings.params()) == settings


@pytest.mark.parametrize(("own", "message"), [
    ({"depth": "middle"},
     r"^adaptation_methods\.x\.vpt\.depth must be one of \('shallow', 'deep'\); got 'middle'"),
    ({"length": 0}, r"^adaptation_methods\.x\.vpt\.length must be an integer >= 1; got 0"),
    ({"length": 2.0}, r"^adaptation_methods\.x\.vpt\.length must be an integer >= 1"),
    ({"dropout": 1}, r"^adaptation_methods\.x\.vpt\.dropout must be a number in \[0, 1\); "
                     r"got 1"),
    ({"tokens": 5}, r"^adaptation_methods\.x\.vpt\.tokens: unknown; "
                    r"adaptation_methods\.x\.vpt takes .*'depth'"),
])
def test_a_wrong_setting_names_its_key_and_what_is_allowed(own, message):
    with pytest.raises(ValueError, match=message):
        adaptation_settings("x", {"method": "vpt", "vpt": own})


def test_a_vision_tower_without_blocks_to_prompt_is_refused():
    model, _ = _tiny()
    model.visual = torch.nn.Identity()
    with pytest.raises(ValueError, match=r"method vpt needs an open_clip ViT vision tower "
                                         r".*; this model's is Identity\. Pick a ViT model"):
        Vpt().attach(model, VptSettings())


def test_the_report_line_names_the_method_and_its_settings():
    line = method_description("prompts", {"method": "vpt", "lr": 0.05,
                                          "vpt": {"depth": "deep", "length": 10}})
    assert line.startswith("VPT: ") and "depth=deep, length=10, rest default" in line
    assert "lr 0.05" in line and "\n" not in line


# Training --------------------------------------------------------------------------
def _adapted(shapes, seed=1, depth="shallow", **overrides) -> AdaptedClip:
    entry = {"method": "vpt", "lr": 5e-2, "max_steps": 240, "batch_size": 16,
             "eval_every": 40, "checkpoint_every": 20, "crop_scale": [0.5, 1.0],
             "vpt": {"depth": depth}, **overrides}
    return AdaptedClip.from_settings(load_model(ModelSpec(TINY_MODEL)), shapes["names"],
                                     adaptation_settings("test", entry), seed)


def _fit(adapted, shapes, **kwargs):
    return TrainingLoop(adapted).fit(*shapes["train"], *shapes["val"], adapted.preprocess,
                                     adapted.settings.train.max_steps, **kwargs)


def _val_accuracy(adapted, shapes) -> float:
    paths, labels = shapes["val"]
    return float((adapted.predict(paths, adapted.preprocess).argmax(1) == labels).mean())


@pytest.mark.parametrize("depth", ["shallow", "deep"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_vpt_learns_for_every_seed(shapes, depth, seed):
    adapted = _adapted(shapes, seed=seed, depth=depth)
    untrained = _val_accuracy(adapted, shapes)  # about chance (1/6): a random model
    result = _fit(adapted, shapes)
    loss = result.history["loss"].to_numpy()
    assert loss[-10:].mean() < 0.5 * loss[:10].mean()
    # measured: +0.31 to +0.40 over 48 images (shallow and deep, seeds 1-3)
    assert result.best_val_accuracy >= untrained + 0.25
    assert result.trainable_parameters == (2 if depth == "deep" else 1) * 5 * WIDTH


def test_an_interrupted_run_resumes_to_the_same_result(shapes, tmp_path):
    settings = {"depth": "deep", "dropout": 0.1}  # dropout: its draws must resume too
    straight = _adapted(shapes, vpt=settings, max_steps=40)
    expected = _fit(straight, shapes, checkpoint_dir=tmp_path / "a")

    def interrupt(self, start, stop):
        for step, images, labels in real(self, start, stop):
            if step + 1 == 33:  # after the checkpoint at step 20
                raise KeyboardInterrupt
            yield step, images, labels

    real = TrainingBatches.steps
    first = _adapted(shapes, vpt=settings, max_steps=40)
    with pytest.raises(KeyboardInterrupt), mock.patch.object(TrainingBatches, "steps",
                                                             interrupt):
        _fit(first, shapes, checkpoint_dir=tmp_path / "b")
    second = _adapted(shapes, vpt=settings, max_steps=40)  # as a new process would
    resumed = _fit(second, shapes, checkpoint_dir=tmp_path / "b")
    assert resumed.steps_done == 40
    np.testing.assert_allclose(resumed.history["loss"], expected.history["loss"], rtol=1e-5)
    assert resumed.best_val_accuracy == expected.best_val_accuracy
    torch.testing.assert_close(second.state()["prompts"], straight.state()["prompts"])
    assert not torch.equal(straight.state()["prompts"],
                           _adapted(shapes, vpt=settings).state()["prompts"])  # it trained
