"""The trainer on generated shapes with the tiny random model: it learns (for several
seeds), resumes to the same result after an interruption, checkpoints only what trains,
and its merged export equals the adapted model.

The tiny model has random weights, so CLIP-LoRA's defaults (r=2, alpha=1, lr 2e-4, 500
steps per shot) would barely move it in a test's budget; these tests use r=4, alpha=8,
lr 5e-3 and 80 steps. The code path is the same.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clip_lora_pipeline.core import train as train_module
from clip_lora_pipeline.core.lora import LoraSettings
from clip_lora_pipeline.core.model_id import ModelSpec
from clip_lora_pipeline.core.models import TINY_MODEL, load_model
from clip_lora_pipeline.core.sources.synthetic import Synthetic
from clip_lora_pipeline.core.train import Trainer, TrainingError, TrainSettings

CPU = torch.device("cpu")
FAST_LORA = LoraSettings(r=4, alpha=8, dropout=0.1)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    options = {"num_classes": 6, "images_per_class": 24, "image_size": 32, "seed": 0}
    Synthetic().prepare(root, **options)
    manifest = Synthetic().index(root, **options).sample(frac=1.0, random_state=0)
    train, val = manifest.iloc[:96], manifest.iloc[96:]
    names = manifest.drop_duplicates("label").sort_values("label")["class_name"].tolist()
    return {
        "train": ([str(root / p) for p in train["path"]], train["label"].tolist()),
        "val": ([str(root / p) for p in val["path"]], val["label"].to_numpy()),
        "names": names,
    }


def _trainer(shapes, seed=1, method="lora", head="text", lora=FAST_LORA, **overrides):
    torch.manual_seed(seed)
    loaded = load_model(ModelSpec(TINY_MODEL))
    values = {"lr": 5e-3, "max_steps": 80, "batch_size": 16, "eval_every": 20,
              "checkpoint_every": 20, "crop_scale": (0.5, 1.0), **overrides}
    settings = TrainSettings(method=method, head=head, seed=seed, **values)
    trainer = Trainer(loaded.model, loaded.tokenizer, shapes["names"], settings, CPU,
                      torch.float32, lora=lora, image_size=32)
    return trainer, loaded


def _fit(trainer, loaded, shapes, **kwargs):
    paths, labels = shapes["train"]
    val_paths, val_labels = shapes["val"]
    return trainer.fit(paths, labels, val_paths, val_labels, loaded.preprocess,
                       trainer.settings.max_steps, **kwargs)


@contextlib.contextmanager
def _interrupted_at(step: int):
    """Ctrl-C while step ``step`` loads its batch (after the checkpoint at step 40/20)."""
    real = train_module._load_images

    def load(paths, indices, transform, seed, current):
        if current + 1 == step:
            raise KeyboardInterrupt
        return real(paths, indices, transform, seed, current)

    train_module._load_images = load
    try:
        yield
    finally:
        train_module._load_images = real


def _val_accuracy(trainer, loaded, shapes) -> float:
    paths, labels = shapes["val"]
    return float((trainer.predict(paths, loaded.preprocess).argmax(1) == labels).mean())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lora_learns_for_every_seed(shapes, seed):
    trainer, loaded = _trainer(shapes, seed=seed)
    untrained = _val_accuracy(trainer, loaded, shapes)
    result = _fit(trainer, loaded, shapes)
    loss = result.history["loss"].to_numpy()
    assert loss[-10:].mean() < 0.5 * loss[:10].mean()
    assert result.best_val_accuracy >= untrained + 0.3
    assert _val_accuracy(trainer, loaded, shapes) == pytest.approx(result.best_val_accuracy)
    assert result.trainable_parameters == sum(p.numel() for p in trainer.params.values())
    assert result.peak_memory_mb > 0 and result.wall_seconds > 0


def test_bitfit_and_linear_head_train_through_the_same_trainer(shapes):
    bitfit, loaded = _trainer(shapes, method="bitfit")
    assert all(name.endswith(".bias") for name in bitfit.params)
    history = _fit(bitfit, loaded, shapes).history
    assert history["loss"][-10:].mean() < history["loss"][:10].mean()

    linear, loaded = _trainer(shapes, head="linear", text_alignment_weight=0.3)
    assert {"linear.weight", "linear.bias"} <= set(linear.params)
    result = _fit(linear, loaded, shapes)
    assert result.history["loss"][-10:].mean() < result.history["loss"][:10].mean()


def test_interrupted_run_resumes_to_the_same_result(shapes, tmp_path):
    straight, loaded = _trainer(shapes)
    expected = _fit(straight, loaded, shapes, checkpoint_dir=tmp_path / "a")

    first, loaded = _trainer(shapes)
    with pytest.raises(KeyboardInterrupt), _interrupted_at(53):
        _fit(first, loaded, shapes, checkpoint_dir=tmp_path / "b")
    assert (tmp_path / "b" / "last").exists()
    # A new process would start from scratch: a fresh model and trainer.
    second, loaded = _trainer(shapes)
    resumed = _fit(second, loaded, shapes, checkpoint_dir=tmp_path / "b")
    assert resumed.steps_done == 80
    np.testing.assert_allclose(resumed.history["loss"], expected.history["loss"], rtol=1e-5)
    assert resumed.best_val_accuracy == expected.best_val_accuracy
    for name, value in straight.adapter_state().items():
        torch.testing.assert_close(second.adapter_state()[name], value)


def test_checkpoint_left_only_under_its_old_name_is_used(shapes, tmp_path):
    trainer, loaded = _trainer(shapes, max_steps=20)
    done = _fit(trainer, loaded, shapes, checkpoint_dir=tmp_path)
    (tmp_path / "last").rename(tmp_path / "last.old")
    again, loaded = _trainer(shapes, max_steps=20)
    resumed = _fit(again, loaded, shapes, checkpoint_dir=tmp_path)
    np.testing.assert_array_equal(resumed.history["loss"], done.history["loss"])
    for name, value in trainer.adapter_state().items():
        torch.testing.assert_close(again.adapter_state()[name], value)


def test_checkpoint_holds_only_trainable_parameters(shapes, tmp_path):
    trainer, loaded = _trainer(shapes, max_steps=None, iterations_per_shot=1)
    paths, labels = shapes["train"]
    trainer.fit(paths, labels, *shapes["val"], loaded.preprocess, 20,
                checkpoint_dir=tmp_path)
    saved = load_file(str(tmp_path / "last" / "trainable.safetensors"))
    assert set(saved) == set(trainer.params)
    assert all("lora_" in name for name in saved)
    size = sum(t.numel() for t in saved.values())
    assert size == trainer.trainable_count < 0.01 * sum(
        p.numel() for p in trainer.model.parameters())
    assert not list(tmp_path.glob(".last-*"))  # no staging folder left behind


def test_changed_settings_refuse_to_resume(shapes, tmp_path):
    trainer, loaded = _trainer(shapes)
    with pytest.raises(KeyboardInterrupt), _interrupted_at(25):
        _fit(trainer, loaded, shapes, checkpoint_dir=tmp_path)
    other, loaded = _trainer(shapes, weight_decay=0.0)
    with pytest.raises(TrainingError, match="other training settings"):
        _fit(other, loaded, shapes, checkpoint_dir=tmp_path)


def test_merged_export_equals_adapted_model(shapes):
    trainer, loaded = _trainer(shapes, max_steps=20)
    _fit(trainer, loaded, shapes)
    images = torch.randn(3, 3, 32, 32)
    trainer.model.eval()
    with torch.no_grad():
        adapted = trainer.model.clip.encode_image(images)
        merged = trainer.merged_clip().eval()
        assert not any("lora" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged.encode_image(images), adapted, atol=1e-5, rtol=1e-5)
        tokens = loaded.tokenizer(["a photo of a red circle."])
        torch.testing.assert_close(merged.encode_text(tokens),
                                   trainer.model.clip.encode_text(tokens), atol=1e-5, rtol=1e-5)


def test_settings_are_validated():
    with pytest.raises(TrainingError, match="unknown"):
        TrainSettings.from_params({"learning_rate": 1.0})
    with pytest.raises(TrainingError, match="method"):
        TrainSettings.from_params({"method": "adapter"})
    assert TrainSettings().total_steps(16) == 8000


def test_predict_builds_no_autograd_graph_and_matches_batches(shapes):
    trainer, loaded = _trainer(shapes)
    grad_modes = []
    hook = trainer.model.clip.visual.register_forward_hook(
        lambda *_: grad_modes.append(torch.is_grad_enabled()))
    paths, _ = shapes["val"]
    whole = trainer.predict(paths, loaded.preprocess, batch_size=64)
    hook.remove()
    assert grad_modes and not any(grad_modes)  # memory of one batch, not of the test set
    assert torch.is_grad_enabled() and trainer.model.training
    in_small_batches = trainer.predict(paths, loaded.preprocess, batch_size=5)
    np.testing.assert_allclose(whole, in_small_batches, atol=1e-5)


def test_vision_only_lora_trains_after_an_evaluation_of_the_untrained_model(shapes):
    # The frozen text tower's class embeddings are cached by the first call, here
    # predict(); training must still be able to backpropagate through them.
    vision_only = LoraSettings(r=4, alpha=8, dropout=0.1, encoders="vision")
    trainer, loaded = _trainer(shapes, lora=vision_only, max_steps=4, eval_every=2)
    assert not trainer.model.text_trains
    _val_accuracy(trainer, loaded, shapes)
    result = _fit(trainer, loaded, shapes)
    assert result.steps_done == 4
