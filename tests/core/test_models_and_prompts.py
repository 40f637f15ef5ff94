"""Model loading, trimmed text encoding and cached-embedding equivalence,
on the tiny randomly initialised model (same code paths as a real one)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file

from clip_lora_pipeline.core import models
from clip_lora_pipeline.core.attention import open_clip_state_dict
from clip_lora_pipeline.core.embed import (
    embeddings_matrix,
    embeddings_table,
    encode_images,
)
from clip_lora_pipeline.core.images import load_rgb
from clip_lora_pipeline.core.lora import LoraSettings, peft_config
from clip_lora_pipeline.core.manifest import make_manifest
from clip_lora_pipeline.core.metrics import evaluate
from clip_lora_pipeline.core.model_id import slug_resolver, uses_quick_gelu
from clip_lora_pipeline.core.models import (
    TINY_MODEL,
    ModelError,
    ModelSpec,
    load_model,
    model_slug,
)
from clip_lora_pipeline.core.pooled_block import (
    PooledTokenBlock,
    compute_pooled_token_only,
)
from clip_lora_pipeline.core.prompts import (
    GROUP_OVERHEAD_TOKENS,
    PromptError,
    build_text_classifier,
    encode_text_trimmed,
    end_of_text_lengths,
    length_groups,
    templates_for,
)
from tests.conftest import write_image
from tests.core.conftest import generated_shapes
from tests.core.tiny import assert_close


def _activations(model) -> tuple[int, int]:
    """(QuickGELU modules, nn.GELU modules) in the model."""
    modules = list(model.modules())
    return (sum(isinstance(m, QuickGELU) for m in modules),
            sum(isinstance(m, torch.nn.GELU) for m in modules))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model(ModelSpec(TINY_MODEL))


def _lora_image_gradients(model, images):
    from peft import get_peft_model

    torch.manual_seed(0)  # the same LoRA initialisation for both models
    peft_model = get_peft_model(model, peft_config(model, LoraSettings(dropout=0.0)))
    clip = peft_model.base_model.model
    with torch.no_grad():  # B starts at zero; nonzero B gives A gradients to compare too
        for name, param in clip.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    clip.train()
    features = clip.encode_image(images)
    features.square().sum().backward()
    grads = {n: p.grad for n, p in clip.named_parameters() if p.grad is not None}
    return features.detach(), grads


def test_last_vision_block_computes_the_class_token_alone_with_the_same_results():
    plain = load_model(ModelSpec(TINY_MODEL), pooled_token_only=False).model
    pooled = load_model(ModelSpec(TINY_MODEL)).model
    assert type(plain.visual.transformer.resblocks[-1]) is open_clip.transformer.ResidualAttentionBlock
    assert isinstance(pooled.visual.transformer.resblocks[-1], PooledTokenBlock)
    assert list(plain.state_dict()) == list(pooled.state_dict())
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(pooled.encode_image(images), plain.encode_image(images),
                                   atol=1e-5, rtol=1e-5)
    # LoRA training sees the same features and the same gradients
    plain_features, plain_grads = _lora_image_gradients(plain, images)
    pooled_features, pooled_grads = _lora_image_gradients(pooled, images)
    torch.testing.assert_close(pooled_features, plain_features, atol=1e-5, rtol=1e-5)
    assert pooled_grads.keys() == plain_grads.keys()
    assert {n.split(".")[0] for n in plain_grads} == {"visual"}
    assert all(g.abs().max() > 0 for g in plain_grads.values())
    for name, grad in plain_grads.items():
        torch.testing.assert_close(pooled_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_towers_that_read_other_tokens_keep_their_last_block():
    model = load_model(ModelSpec(TINY_MODEL), pooled_token_only=False).model
    model.visual.output_tokens = True
    assert not compute_pooled_token_only(model)
    model.visual.output_tokens, model.visual.pool_type = False, "avg"
    assert not compute_pooled_token_only(model)
    model.visual.pool_type = "tok"
    assert compute_pooled_token_only(model)


def test_unknown_model_suggests_close_names():
    with pytest.raises(ModelError, match="ViT-B-32"):
        load_model(ModelSpec("ViT-B-33"))


def test_unknown_tag_lists_the_models_tags():
    with pytest.raises(ModelError) as error:
        load_model(ModelSpec("ViT-B-32", pretrained="opnai"))
    assert "openai" in str(error.value) and "laion2b_s34b_b79k" in str(error.value)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(ModelError, match="nope.safetensors does not exist"):
        load_model(ModelSpec(TINY_MODEL, checkpoint=str(tmp_path / "nope.safetensors")))


def test_unreachable_weights_fail_fast_with_local_path_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing cached
    monkeypatch.setattr(Path, "home", lambda: tmp_path)

    def refused(*args, **kwargs):
        raise ConnectionRefusedError("Connection refused")

    monkeypatch.setattr(socket, "create_connection", refused)
    with pytest.raises(ModelError) as error:
        load_model(ModelSpec("ViT-B-32", pretrained="laion2b_s34b_b79k"))
    assert "cannot reach huggingface.co" in str(error.value)
    assert "model.checkpoint" in str(error.value)


def test_download_that_cannot_happen_says_to_set_a_local_path(monkeypatch):
    monkeypatch.setattr(models, "check_weights_reachable", lambda spec: None)

    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai'")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", offline)
    with pytest.raises(ModelError, match="model.checkpoint"):
        load_model(ModelSpec("ViT-B-32", pretrained="openai"))


def test_local_checkpoint_gives_identical_outputs(tiny, tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file(open_clip_state_dict(tiny.model), str(path))
    loaded = load_model(ModelSpec(TINY_MODEL, checkpoint=str(path)))
    images = torch.randn(3, 3, 32, 32)
    tokens = tiny.tokenizer(["a photo of a red circle.", "a dog"])
    with torch.inference_mode():
        assert torch.equal(tiny.model.encode_image(images), loaded.model.encode_image(images))
        assert torch.equal(tiny.model.encode_text(tokens), loaded.model.encode_text(tokens))
    slug = model_slug(loaded.spec)
    assert slug.startswith(f"{TINY_MODEL}__ckpt-") and len(slug.split("ckpt-")[1]) == 12


def test_slug_changes_with_the_checkpoint_contents(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    first = model_slug(ModelSpec(TINY_MODEL, checkpoint=str(path)))
    save_file({"a": torch.ones(2)}, str(path))
    assert model_slug(ModelSpec(TINY_MODEL, checkpoint=str(path))) != first
    assert model_slug(ModelSpec("ViT-B-32", "laion2b_s34b_b79k")) == "ViT-B-32__laion2b_s34b_b79k"


def test_openai_weights_get_quick_gelu_and_their_own_slug():
    # OpenAI's weights were trained with QuickGELU; open_clip's tag config says so
    assert open_clip.get_pretrained_cfg("ViT-B-16", "openai")["quick_gelu"]
    assert uses_quick_gelu(ModelSpec("ViT-B-16", "openai"))
    assert not uses_quick_gelu(ModelSpec("ViT-B-16", "laion2b_s34b_b88k"))
    assert not uses_quick_gelu(ModelSpec("ViT-B-16", "openai", quick_gelu=False))
    assert not uses_quick_gelu(ModelSpec("ViT-B-16"))
    # GELU embeddings cached under the old slug are never reused
    assert model_slug(ModelSpec("ViT-B-16", "openai")) == "ViT-B-16-quickgelu__openai"
    assert model_slug(ModelSpec("ViT-B-16", "openai", quick_gelu=False)) == "ViT-B-16__openai"
    # open_clip's own -quickgelu name is the same network: the same slug
    assert model_slug(ModelSpec("ViT-B-16-quickgelu", "openai")) == "ViT-B-16-quickgelu__openai"


def test_tag_that_says_quick_gelu_builds_quick_gelu(tiny, tmp_path, monkeypatch):
    # The tiny model under a tag configured like OpenAI's, "downloaded" from a local file.
    path = tmp_path / "tiny.safetensors"
    save_file(open_clip_state_dict(tiny.model), str(path))
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, TINY_MODEL,
                        {"like_openai": {"quick_gelu": True}})
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda *a, **k: str(path))
    monkeypatch.setattr(models, "check_weights_reachable", lambda spec: None)
    loaded = load_model(ModelSpec(TINY_MODEL, pretrained="like_openai"))
    assert _activations(loaded.model) == (4, 0)  # 2 vision + 2 text MLPs
    assert _activations(tiny.model) == (0, 4)
    assert model_slug(loaded.spec) == f"{TINY_MODEL}-quickgelu__like_openai"


def test_local_checkpoint_with_quick_gelu_true_gets_quick_gelu(tiny, tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file(open_clip_state_dict(tiny.model), str(path))
    gelu = load_model(ModelSpec(TINY_MODEL, checkpoint=str(path)))
    quick = load_model(ModelSpec(TINY_MODEL, checkpoint=str(path), quick_gelu=True))
    assert _activations(gelu.model) == (0, 4) and _activations(quick.model) == (4, 0)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert not torch.allclose(gelu.model.encode_image(images),
                                  quick.model.encode_image(images))
    slug = model_slug(quick.spec)
    assert slug.startswith(f"{TINY_MODEL}-quickgelu__ckpt-")
    assert slug.split("__")[1] == model_slug(gelu.spec).split("__")[1]  # same weights
    random = load_model(ModelSpec(TINY_MODEL, quick_gelu=True))  # the pretrained=None path
    assert _activations(random.model) == (4, 0)


def test_quick_gelu_is_validated():
    with pytest.raises(ModelError, match="quick_gelu must be true, false or null"):
        ModelSpec.from_params({"name": "ViT-B-16", "quick_gelu": "yes"})
    with pytest.raises(ModelError, match="name, pretrained, checkpoint, quick_gelu"):
        ModelSpec.from_params({"name": "ViT-B-16", "quickgelu": True})
    with pytest.raises(ModelError, match="without '-quickgelu'"):
        load_model(ModelSpec("ViT-B-16-quickgelu", quick_gelu=False))


def test_slug_resolver_takes_the_model_mapping_or_its_fields():
    model = {"name": "ViT-B-16", "pretrained": "openai", "checkpoint": None}
    expected = "ViT-B-16-quickgelu__openai"
    assert slug_resolver("ViT-B-16", "openai", None) == expected
    assert slug_resolver("ViT-B-16", "openai", "", False) == "ViT-B-16__openai"
    assert slug_resolver("ViT-B-16", "openai", "", "false") == "ViT-B-16__openai"
    OmegaConf.register_resolver("test_model_slug", slug_resolver, replace=True)
    try:
        config = OmegaConf.create({
            "model": model, "path": "${test_model_slug:${model}}",
            "fields": "${test_model_slug:${model.name},${model.pretrained},"
                      "${model.checkpoint},false}",
        })
        assert config.path == expected
        assert config.fields == "ViT-B-16__openai"
        config.model.quick_gelu = False
        assert config.path == "ViT-B-16__openai"
    finally:
        OmegaConf.clear_resolver("test_model_slug")


def test_random_weights_are_the_same_in_every_load():
    first = load_model(ModelSpec(TINY_MODEL)).model.state_dict()
    torch.manual_seed(12345)  # the caller's RNG state must not matter
    second = load_model(ModelSpec(TINY_MODEL)).model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_trimmed_text_encoding_equals_encode_text(tiny):
    prompts = [t.format(name) for name in ("pink primrose", "hard-leaved pocket orchid", "x")
               for t in templates_for("ensemble", "flowers102")[:10]]
    tokens = tiny.tokenizer(prompts)
    assert int(end_of_text_lengths(tiny.model, tokens).max()) < 30
    assert len(length_groups(end_of_text_lengths(tiny.model, tokens).tolist())) > 1
    with torch.inference_mode():
        full = tiny.model.encode_text(tokens)
        trimmed = encode_text_trimmed(tiny.model, tokens)
    assert_close(trimmed, full)


def test_trimmed_text_encoding_has_the_gradients_of_encode_text(tiny):
    # the LoRA trainer backpropagates through it every step
    tokens = tiny.tokenizer(["a photo of a x.", "a photo of a hard-leaved pocket orchid.",
                             "a blurry photo of a pink primrose, a type of flower."])
    weight = tiny.model.transformer.resblocks[0].mlp.c_fc.weight
    grads = []
    for encode in (type(tiny.model).encode_text, encode_text_trimmed):
        weight.grad = None
        (encode(tiny.model, tokens) ** 2).sum().backward()
        grads.append(weight.grad.clone())
    weight.grad = None
    assert_close(grads[1], grads[0])


@pytest.mark.parametrize("lengths", [[9] * 58 + [10] * 30 + [11] * 11 + [13] * 3,
                                     [5, 30, 5, 30, 6], [7], [4, 4, 4]])
def test_length_groups_cover_every_prompt_once_and_never_cut_one(lengths):
    groups = length_groups(lengths)
    members = np.concatenate([indices for indices, _ in groups])
    assert sorted(members.tolist()) == list(range(len(lengths)))
    assert all(max(np.asarray(lengths)[i]) == n for i, n in groups)
    computed = sum(len(i) * n for i, n in groups) + GROUP_OVERHEAD_TOKENS * len(groups)
    assert computed <= len(lengths) * max(lengths) + GROUP_OVERHEAD_TOKENS
    assert len(groups) <= 3


def test_text_classifier_is_normalised_mean_of_normalised_templates(tiny):
    templates = templates_for("dataset", "eurosat")
    classes = ["forest", "river", "lake or sea"]
    classifier = build_text_classifier(tiny.model, tiny.tokenizer, classes, templates,
                                       torch.device("cpu"), batch_size=4)
    with torch.inference_mode():
        direct = F.normalize(tiny.model.encode_text(
            tiny.tokenizer([t.format(c) for c in classes for t in templates])), dim=-1)
    expected = F.normalize(direct.reshape(3, len(templates), -1).mean(1), dim=-1)
    assert classifier.shape == (3, 32)
    assert_close(classifier, expected)


def test_prompt_sets():
    assert templates_for("simple", "x") == ["a photo of a {}."]
    assert len(templates_for("ensemble", "x")) == 80
    assert templates_for("dataset", "flowers102") == ["a photo of a {}, a type of flower."]
    assert templates_for(["itap of a {}."], "x") == ["itap of a {}."]
    with pytest.raises(PromptError, match="unknown prompt set"):
        templates_for("fancy", "x")
    with pytest.raises(PromptError, match="one '\\{\\}'"):
        templates_for(["no placeholder"], "x")


def test_cached_embeddings_and_zero_shot_logits_equal_direct_open_clip(tiny, tmp_path):
    root = tmp_path / "synthetic"
    manifest = generated_shapes(root, 5, 4, 40)
    cpu = torch.device("cpu")
    embedded = encode_images(tiny.model, manifest, root, tiny.preprocess, cpu,
                             batch_size=6, num_workers=2)
    table = embeddings_table(manifest, embedded)
    restored = embeddings_matrix(table)
    assert restored.dtype == np.float32
    assert np.allclose(np.linalg.norm(restored, axis=1), 1.0, atol=1e-5)

    images = torch.stack([tiny.preprocess(load_rgb(root / p)) for p in manifest["path"]])
    classes = manifest.drop_duplicates("label").sort_values("label")["class_name"].tolist()
    with torch.inference_mode():
        image_features = F.normalize(tiny.model.encode_image(images), dim=-1)
        text_features = F.normalize(tiny.model.encode_text(
            tiny.tokenizer([f"a photo of a {c}." for c in classes])), dim=-1)
        direct_logits = (tiny.model.logit_scale.exp() * image_features @ text_features.T).numpy()
    assert np.allclose(restored, image_features.numpy(), atol=1e-5)

    classifier = build_text_classifier(tiny.model, tiny.tokenizer, classes,
                                       templates_for("simple", "synthetic"), cpu)
    logits = tiny.model.logit_scale.exp().item() * restored @ classifier.numpy().T
    assert_close(logits, direct_logits)  # 100 x cosine: tolerance relative to the scale


def test_evaluate_metrics_and_tables():
    logits = np.array([[3.0, 1, 0, 0, 0, 0], [0, 3.0, 1, 0, 0, 0], [0, 3.0, 1, 0, 0, 0],
                       [0, 0, 0, 0, 0, 3.0]])
    labels = np.array([0, 1, 2, 5])
    names = ["a", "b", "c", "d", "e", "f"]
    metrics, per_class, predictions = evaluate(logits, labels, names, ["p0", "p1", "p2", "p3"])
    assert metrics["top1"] == 0.75
    assert metrics["top5"] == 1.0
    assert metrics["mean_per_class_recall"] == pytest.approx((1 + 1 + 0 + 1) / 4)
    assert per_class.set_index("class_name").loc["b", "precision"] == 0.5
    assert per_class["support"].tolist() == [1, 1, 1, 0, 0, 1]
    assert predictions["predicted_class"].tolist() == ["a", "b", "b", "f"]
    assert predictions["top5_classes"][2][:2] == ["b", "c"]
    small = evaluate(logits[:3, :3], labels[:3], names[:3], ["p0", "p1", "p2"])[0]
    assert "top5" not in small


def test_num_workers_auto_is_zero_on_cpu_and_validated():
    from clip_lora_pipeline.core.runtime import resolve_num_workers

    assert resolve_num_workers("auto", torch.device("cpu")) == 0
    assert resolve_num_workers("auto", torch.device("cuda")) >= 1
    assert resolve_num_workers(3, torch.device("cpu")) == 3
    with pytest.raises(ValueError, match="num_workers"):
        resolve_num_workers(-1, torch.device("cpu"))


def test_pinned_memory_only_with_cuda(tiny, tmp_path):
    from clip_lora_pipeline.core.embed import image_loader

    manifest = make_manifest(["a.png"], [0], ["a"])
    cpu_loader = image_loader(manifest, tmp_path, tiny.preprocess, torch.device("cpu"),
                              num_workers=1)
    gpu_loader = image_loader(manifest, tmp_path, tiny.preprocess, torch.device("cuda"))
    assert not cpu_loader.pin_memory and gpu_loader.pin_memory


def test_threaded_batches_equal_the_dataloaders_in_order(tiny, tmp_path):
    from clip_lora_pipeline.core.embed import ThreadedBatches, image_loader

    paths = [f"c{i % 3}/{i:02d}.png" for i in range(11)]
    for i, path in enumerate(paths):
        write_image(tmp_path / path, size=(30 + i, 20 + 2 * i), seed=i)
    manifest = make_manifest(paths, [i % 3 for i in range(11)], ["a", "b", "c"])
    cpu = torch.device("cpu")
    threaded = image_loader(manifest, tmp_path, tiny.preprocess, cpu, batch_size=4)
    plain = image_loader(manifest, tmp_path, tiny.preprocess, cpu, batch_size=4,
                         num_workers=1)
    assert isinstance(threaded, ThreadedBatches) and len(threaded) == 3
    assert threaded.split is not None  # to-tensor and normalise run once per batch
    pairs = list(zip(threaded, plain, strict=True))
    for (images, labels), (expected_images, expected_labels) in pairs:
        assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
def test_batched_to_tensor_and_normalise_are_bit_identical_to_per_image(resize_mode, tmp_path):
    from clip_lora_pipeline.core.embed import ManifestImages, ThreadedBatches

    transform = open_clip.image_transform(32, is_train=False, resize_mode=resize_mode)
    paths = []
    for i, (size, mode) in enumerate([((40, 25), "RGB"), ((21, 50), "L"), ((33, 33), "RGBA"),
                                      ((64, 17), "P")]):
        paths.append(f"{i}.png")
        write_image(tmp_path / paths[-1], size=size, mode=mode, seed=i)
    dataset = ManifestImages(make_manifest(paths, [0, 1, 0, 1], ["a", "b"]), tmp_path, transform)
    batches = ThreadedBatches(dataset, batch_size=3, threads=2)
    assert batches.split is not None
    images = torch.cat([images for images, _ in batches])
    expected = torch.stack([dataset[i][0] for i in range(len(dataset))])
    assert images.dtype == expected.dtype and images.is_contiguous()
    assert torch.equal(images, expected)


def test_other_transforms_run_per_image_unchanged(tmp_path):
    from torchvision import transforms as T

    from clip_lora_pipeline.core.embed import (
        ManifestImages,
        ThreadedBatches,
        split_batch_tail,
    )

    assert split_batch_tail(open_clip.image_transform(32, is_train=True)) is None
    custom = T.Compose([T.Resize(32), T.CenterCrop(32), T.Grayscale(3), T.ToTensor(),
                        T.Normalize([0.5] * 3, [0.25] * 3)])
    assert split_batch_tail(custom) is None
    assert split_batch_tail(lambda image: image) is None
    write_image(tmp_path / "a.png", size=(40, 30))
    dataset = ManifestImages(make_manifest(["a.png"], [0], ["a"]), tmp_path, custom)
    (images, _), = ThreadedBatches(dataset, batch_size=2, threads=2)
    assert torch.equal(images[0], dataset[0][0])
