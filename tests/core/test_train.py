"""The trainer on generated shapes with the tiny random model: it learns (for several
seeds), batches like CLIP-LoRA (shuffled epochs, partial last batch), keeps the last or
the best validated state, resumes to the same result after an interruption, checkpoints
only what trains, and its merged export equals the adapted model.

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
from clip_lora_pipeline.core.adapters import build_trainer
from clip_lora_pipeline.core.batches import EpochBatches, micro_batches
from clip_lora_pipeline.core.lora import LoraSettings
from clip_lora_pipeline.core.model_id import ModelSpec
from clip_lora_pipeline.core.models import TINY_MODEL, load_model
from clip_lora_pipeline.core.sources.synthetic import Synthetic
from clip_lora_pipeline.core.train import Trainer, TrainingError, TrainSettings
from tests.core.tiny import assert_close

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
def _batch_sizes():
    """The size of every batch the trainer loads, in order."""
    real, sizes = train_module._load_images, []

    def load(paths, indices, transform, seed, current):
        sizes.append(len(indices))
        return real(paths, indices, transform, seed, current)

    train_module._load_images = load
    try:
        yield sizes
    finally:
        train_module._load_images = real


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
    # the last state is kept (select: last), and it was validated at the final step
    assert (result.selected, result.selected_step) == ("last", 80)
    assert _val_accuracy(trainer, loaded, shapes) == pytest.approx(
        result.history["val_accuracy"].iloc[-1])
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
    assert (TrainSettings().select, TrainSettings().seed) == ("last", None)
    with pytest.raises(TrainingError, match="select"):
        TrainSettings.from_params({"select": "best"})
    with pytest.raises(TrainingError, match="patience needs select: best_val"):
        TrainSettings.from_params({"patience": 3})
    with pytest.raises(TrainingError, match="needs eval_every"):
        TrainSettings.from_params({"select": "best_val", "eval_every": None})


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
    assert_close(in_small_batches, whole)


def test_vision_only_lora_trains_after_an_evaluation_of_the_untrained_model(shapes):
    # The frozen text tower's class embeddings are cached by the first call, here
    # predict(); training must still be able to backpropagate through them.
    vision_only = LoraSettings(r=4, alpha=8, dropout=0.1, encoders="vision")
    trainer, loaded = _trainer(shapes, lora=vision_only, max_steps=4, eval_every=2)
    assert not trainer.model.text_trains
    _val_accuracy(trainer, loaded, shapes)
    result = _fit(trainer, loaded, shapes)
    assert result.steps_done == 4


@pytest.mark.parametrize(("n", "expected"), [(10, [10, 10, 10, 10]), (47, [32, 15, 32, 15]),
                                             (64, [32, 32, 32, 32])])
def test_batches_are_shuffled_epochs_with_a_partial_last_batch(n, expected):
    batches = EpochBatches(n, batch_size=32, seed=1)
    steps = [batches.indices(step) for step in range(4)]
    assert [len(b) for b in steps] == expected
    first, second = (np.concatenate(steps[k * batches.per_epoch:(k + 1) * batches.per_epoch])
                     for k in (0, 1))
    for epoch in (first, second):
        assert sorted(epoch.tolist()) == list(range(n))  # every image once per epoch
    assert not np.array_equal(first, second)  # reshuffled
    np.testing.assert_array_equal(EpochBatches(n, 32, seed=1).indices(3), steps[3])


def test_trainer_steps_on_partial_batches(shapes):
    trainer, loaded = _trainer(shapes, max_steps=4, batch_size=32, eval_every=None)
    paths, labels = shapes["train"]
    with _batch_sizes() as sizes:
        result = trainer.fit(paths[:47], labels[:47], *shapes["val"], loaded.preprocess, 4)
    assert sizes == [32, 15, 32, 15] and result.steps_done == 4
    assert result.history["val_accuracy"].isna().all()  # eval_every: None never validates
    trainer, loaded = _trainer(shapes, max_steps=2, batch_size=32, eval_every=None)
    with _batch_sizes() as sizes:
        trainer.fit(paths[:10], labels[:10], *shapes["val"], loaded.preprocess, 2)
    assert sizes == [10, 10]


def test_micro_batches_of_a_partial_batch_give_the_full_batch_gradient(shapes):
    assert micro_batches(10, 4) == [(slice(0, 4), 0.4), (slice(4, 8), 0.4), (slice(8, 10), 0.2)]
    no_dropout = LoraSettings(r=4, alpha=8, dropout=0.0)
    grads = []
    for accumulation in (1, 4):  # micro-batches of 4: 4 + 4 + 2 of the 10 images
        trainer, loaded = _trainer(shapes, lora=no_dropout, max_steps=1, batch_size=16,
                                   grad_accumulation=accumulation, eval_every=None)
        paths, labels = shapes["train"]
        trainer.fit(paths[:10], labels[:10], *shapes["val"], loaded.preprocess, 1)
        grads.append({n: p.grad.clone() for n, p in trainer.params.items()})
    assert any(g.abs().max() > 0 for g in grads[0].values())
    for name, grad in grads[0].items():
        assert_close(grads[1][name], grad, rtol=1e-4)


@pytest.mark.parametrize(("select", "saved"), [("last", "trainable"), ("best_val", "best")])
def test_select_keeps_the_last_or_the_best_validated_state(shapes, tmp_path, select, saved):
    trainer, loaded = _trainer(shapes, max_steps=20, eval_every=5, select=select)
    result = _fit(trainer, loaded, shapes, checkpoint_dir=tmp_path)
    kept = load_file(str(tmp_path / "last" / f"{saved}.safetensors"))
    for name, value in trainer.adapter_state().items():
        torch.testing.assert_close(value, kept[name], rtol=0, atol=0)
    assert result.selected == select
    if select == "best_val":
        assert result.selected_step == result.best_step
        assert _val_accuracy(trainer, loaded, shapes) == pytest.approx(result.best_val_accuracy)
    else:
        assert result.selected_step == result.steps_done == 20


def test_seed_none_takes_the_few_shot_seed_and_an_explicit_seed_wins(shapes):
    runtime = {"device": "cpu", "precision": "fp32"}
    method = {"method": "lora", "lora": {"r": 4}}
    trainer, _ = build_trainer({"name": TINY_MODEL}, runtime, shapes["names"], method, seed=7)
    assert trainer.settings.seed == 7
    again, _ = build_trainer({"name": TINY_MODEL}, runtime, shapes["names"], method, seed=7)
    for name, value in trainer.adapter_state().items():  # LoRA's initialisation follows it
        torch.testing.assert_close(again.adapter_state()[name], value, rtol=0, atol=0)
    explicit, _ = build_trainer({"name": TINY_MODEL}, runtime, shapes["names"],
                                {**method, "seed": 3}, seed=7)
    assert explicit.settings.seed == 3
    loaded = load_model(ModelSpec(TINY_MODEL))
    with pytest.raises(TrainingError, match="pass that seed to build_trainer"):
        Trainer(loaded.model, loaded.tokenizer, shapes["names"], TrainSettings(), CPU,
                torch.float32)


@pytest.mark.parametrize(("dtype", "scaled"), [(torch.float16, True), (torch.bfloat16, False)])
def test_half_precisions_train_and_only_fp16_scales_the_loss(shapes, dtype, scaled):
    # CLIP-LoRA trains under fp16 autocast with a GradScaler; bf16 has fp32's range.
    loaded = load_model(ModelSpec(TINY_MODEL))
    settings = TrainSettings(lr=5e-3, max_steps=2, batch_size=8, eval_every=None, seed=1)
    trainer = Trainer(loaded.model, loaded.tokenizer, shapes["names"], settings, CPU, dtype,
                      lora=FAST_LORA, image_size=32)
    assert trainer.scaler.is_enabled() == scaled
    result = _fit(trainer, loaded, shapes)
    assert result.steps_done == 2 and np.isfinite(result.history["loss"]).all()
