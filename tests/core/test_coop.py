"""CoOp on the tiny random model: its settings name the wrong key; its prompts are
"X ... X <class>." and the hook puts the context vectors where the X's are, for every
class prompt however the trimmed encoding groups and trims them (and for no other
text); trimmed and full encodings agree; the trainable count is context x width (per
class where class-specific); the adapter comes back from its artifact, predicts through
core.predict, and is exported as trained (not merged)."""

from __future__ import annotations

import open_clip
import pandas as pd
import pytest
import torch

from clip_lora_pipeline.core.adaptation_settings import adaptation_settings
from clip_lora_pipeline.core.adapted import AdaptedClip, load_clip
from clip_lora_pipeline.core.backbone_methods import BACKBONE_METHODS
from clip_lora_pipeline.core.coop import CoOp, CoOpSettings
from clip_lora_pipeline.core.models import TINY_MODEL
from clip_lora_pipeline.core.predict import logits_from_adapter
from clip_lora_pipeline.core.prompts import encode_text_trimmed
from clip_lora_pipeline.pipelines.lora.nodes import export_merged
from tests.core.tiny import assert_close

MODEL = {"name": TINY_MODEL, "pretrained": None, "checkpoint": None}
RUNTIME = {"device": "cpu", "precision": "fp32", "batch_size": 4}
NAMES = ["red circle", "blue square", "green triangle"]
# Prompts of very different lengths: the trimmed encoding splits them into groups,
# reorders the rows and trims each group to its own length.
LONG = "very " * 30 + "long name"
MIXED = [f"shape {i}" for i in range(10)] + [LONG]
WIDTH = 64  # the tiny model's token embeddings


def _coop(names=NAMES, seed=1, **coop) -> AdaptedClip:
    """CoOp on the tiny model, its context moved off the initial draw (as training would)."""
    loaded, dtype = load_clip(MODEL, RUNTIME)
    entry = {"method": "coop", "coop": coop}
    adapted = AdaptedClip.from_settings(loaded, names, adaptation_settings("x", entry), seed,
                                        dtype)
    with torch.no_grad():
        for param in adapted.trainable_parameters():
            param.add_(0.5 * torch.randn(param.shape, generator=torch.Generator().manual_seed(9)))
    return adapted


def _vectors(adapted: AdaptedClip) -> torch.Tensor:
    return adapted.clip.prompt_context.vectors


# Settings -------------------------------------------------------------------------
def test_coop_is_registered_with_the_official_recipe_as_training_defaults():
    settings = adaptation_settings("coop", {"method": "coop"})
    assert settings.method is BACKBONE_METHODS["coop"] and not settings.method.mergeable
    assert settings.method_settings == CoOpSettings(context_length=16, class_specific=False)
    train = settings.train
    assert (train.optimizer, train.lr, train.momentum, train.weight_decay) == \
        ("sgd", 2e-3, 0.9, 5e-4)
    assert (train.batch_size, train.warmup_epochs, train.warmup_lr, train.min_lr) == \
        (32, 1, 1e-5, 0.0)
    assert train.epochs == {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}
    assert adaptation_settings("coop", settings.params()) == settings


@pytest.mark.parametrize(("coop", "message"), [
    ({"context_length": 0}, r"coop\.context_length must be an integer from 1 to 64; got 0"),
    ({"context_length": 4.0}, r"coop\.context_length must be an integer"),
    ({"class_specific": "yes"}, r"coop\.class_specific must be true or false"),
    ({"init": "a photo of a"}, r"coop\.init must be null \(random context\) or "
                               r"context_length \(16\) words"),
    ({"ctx": 4}, r"coop\.ctx: unknown; adaptation_methods\.x\.coop takes \['class_specific', "
                 r"'context_length', 'init'\]"),
])
def test_a_wrong_coop_setting_names_itself(coop, message):
    with pytest.raises(ValueError, match=r"^adaptation_methods\.x\." + message):
        adaptation_settings("x", {"method": "coop", "coop": coop})


# Prompts and the hook ---------------------------------------------------------------
def test_prompts_are_placeholders_then_the_class_and_the_template_is_not_used():
    adapted = _coop(context_length=4)
    tokenizer = open_clip.get_tokenizer(TINY_MODEL)
    expected = tokenizer([f"X X X X {name}." for name in NAMES])
    torch.testing.assert_close(adapted.class_tokens, expected, rtol=0, atol=0)
    assert adapted.settings.train.template == "a photo of a {}."  # the entry's, unused


@pytest.mark.parametrize("class_specific", [False, True])
def test_the_hook_puts_each_class_context_in_place_of_the_placeholders(class_specific):
    adapted = _coop(MIXED, context_length=4, class_specific=class_specific)
    vectors, tokens = _vectors(adapted), adapted.class_tokens
    assert vectors.shape == (len(MIXED) if class_specific else 1, 4, WIDTH)
    embedding = adapted.clip.token_embedding
    rows = [10, 3, 0]  # reordered and trimmed, as a length group is
    with torch.no_grad():
        out = embedding(tokens[rows, :12])
        plain = embedding.weight[tokens[rows, :12]]
        for position, row in enumerate(rows):
            expected = vectors[row if class_specific else 0]
            torch.testing.assert_close(out[position, 1:5], expected, rtol=0, atol=0)
        torch.testing.assert_close(out[:, 0], plain[:, 0], rtol=0, atol=0)
        torch.testing.assert_close(out[:, 5:], plain[:, 5:], rtol=0, atol=0)
        other = open_clip.get_tokenizer(TINY_MODEL)(["X X X X shape 3!"])  # not a prompt
        torch.testing.assert_close(embedding(other), embedding.weight[other], rtol=0, atol=0)


@pytest.mark.parametrize("class_specific", [False, True])
def test_trimmed_and_full_encodings_of_the_prompts_agree(class_specific):
    adapted = _coop(MIXED, class_specific=class_specific)
    assert len(adapted._text_plan.groups) > 1  # reordered groups, not one trimmed batch
    clip, tokens = adapted.clip, adapted.class_tokens
    with torch.no_grad():
        full = clip.encode_text(tokens)
        assert_close(encode_text_trimmed(clip, tokens, plan=adapted._text_plan), full)
        assert_close(encode_text_trimmed(clip, tokens), full)
        without = load_clip(MODEL, RUNTIME)[0].model.encode_text(tokens)
    assert (full - without).abs().max() > 1e-2  # the context is in both


def test_names_that_fill_the_text_tower_or_tokenise_alike_are_refused():
    with pytest.raises(ValueError, match=r"coop\.context_length 16 plus the class name 'very"):
        _coop(["cat", "very " * 70])
    with pytest.raises(ValueError, match=r"coop\.class_specific: two class names tokenise"):
        _coop(["Red circle", "red  circle"], class_specific=True)
    with pytest.raises(ValueError, match=r"coop\.init 'a zxqvj' is 5 tokens, not "
                                         r"context_length 2: each word must be one token"):
        _coop(init="a zxqvj", context_length=2)  # two words, five tokens


def test_init_words_start_the_context():
    loaded, dtype = load_clip(MODEL, RUNTIME)
    entry = {"method": "coop", "coop": {"init": "a photo of a", "context_length": 4,
                                        "class_specific": True}}
    adapted = AdaptedClip.from_settings(loaded, NAMES, adaptation_settings("x", entry), 1)
    words = open_clip.get_tokenizer(TINY_MODEL)(["a photo of a"])[0, 1:5]
    expected = adapted.clip.token_embedding.weight[words].detach()
    for vectors in _vectors(adapted):
        torch.testing.assert_close(vectors, expected, rtol=0, atol=0)
    assert adapted.class_tokens[0, 1:5].tolist() == words.tolist()


# Counts -----------------------------------------------------------------------------
@pytest.mark.parametrize(("class_specific", "count"), [(False, 16 * WIDTH),
                                                       (True, 3 * 16 * WIDTH)])
def test_only_the_context_trains(class_specific, count):
    adapted = _coop(class_specific=class_specific)
    assert sum(p.numel() for p in adapted.trainable_parameters()) == count
    assert list(adapted.state()) == ["prompt_context.vectors"]
    assert adapted.text_trains  # the class embeddings are recomputed every step


def test_vit_b16_counts_are_the_official_codes():
    """The official PromptLearner: (16, 512) unified, (classes, 16, 512) class-specific."""
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    names = [f"class {i}" for i in range(102)]
    for class_specific, count in ((False, 16 * 512), (True, 102 * 16 * 512)):
        clip = open_clip.create_model("ViT-B-16", pretrained=None)
        attached = CoOp().attach(clip, CoOpSettings(class_specific=class_specific))
        CoOp().class_tokens(attached, names, "{}", tokenizer)
        assert sum(p.numel() for p in clip.parameters() if p.requires_grad) == count


# Storing, predicting, exporting ------------------------------------------------------
@pytest.mark.parametrize("class_specific", [False, True])
def test_the_adapter_predicts_through_core_predict_and_exports_unmerged(few_images,
                                                                        class_specific):
    root, frame = few_images
    adapted = _coop(class_specific=class_specific)
    artifact = adapted.artifact(MODEL)
    paths = [str(root / p) for p in frame["path"]]
    logits, classes = logits_from_adapter(pd.DataFrame(frame), root, artifact, MODEL, RUNTIME)
    assert classes == NAMES
    assert_close(logits, adapted.predict(paths, adapted.preprocess))
    untrained = _coop(seed=2, class_specific=class_specific)
    with torch.no_grad():
        _vectors(untrained).normal_(0, 0.02)
    assert abs(untrained.predict(paths, untrained.preprocess) - logits).max() > 1e-3

    exported = export_merged(artifact, MODEL, RUNTIME)
    assert exported["config"]["merged"] is False
    assert exported["config"]["adapter"]["coop"]["class_specific"] is class_specific
    assert set(exported["tensors"]) == {"prompt_context.vectors"}
    torch.testing.assert_close(exported["tensors"]["prompt_context.vectors"],
                               _vectors(adapted).detach(), rtol=0, atol=0)


def test_the_training_forward_reads_nothing_back_from_the_device():
    """On ``meta`` tensors have no values: a host read in the hook would raise."""
    from clip_lora_pipeline.core.training_step import training_loss

    adapted = _coop(class_specific=True).train()
    adapted.to("meta")
    images = torch.empty(2, 3, 32, 32, device="meta")
    labels = torch.empty(2, dtype=torch.long, device="meta")
    loss, correct = training_loss(adapted, images, labels)
    assert loss.device.type == correct.device.type == "meta"
