"""The training loop on generated shapes with the tiny random model: it learns (for
several seeds), batches like CLIP-LoRA (shuffled epochs, partial last batch), keeps the
last or the best validated state, resumes to the same result after an interruption,
checkpoints only what trains, and its merged export equals the adapted model.

The tiny model has random weights, so CLIP-LoRA's defaults (r=2, alpha=1, lr 2e-4, 500
steps per shot) would barely move it in a test's budget; these tests use r=4, alpha=8,
lr 5e-3 and 80 steps. The code path is the same.
"""

from __future__ import annotations

import contextlib
import itertools
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from clip_lora_pipeline.core.adaptation_settings import adaptation_settings
from clip_lora_pipeline.core.adapted import AdaptedClip
from clip_lora_pipeline.core.batches import EpochBatches, micro_batches
from clip_lora_pipeline.core.durations import Pace
from clip_lora_pipeline.core.model_id import ModelSpec
from clip_lora_pipeline.core.models import TINY_MODEL, load_model
from clip_lora_pipeline.core.runtime import RuntimeSettings
from clip_lora_pipeline.core.train import TrainingError, TrainingLoop
from clip_lora_pipeline.core.train_inputs import TrainingBatches
from clip_lora_pipeline.core.training_step import training_loss
from tests.core.tiny import assert_close

FAST_LORA = {"r": 4, "alpha": 8, "dropout": 0.1}


def _adapted(shapes, seed=1, method="lora", lora=FAST_LORA, dtype=torch.float32,
             **overrides) -> AdaptedClip:
    loaded = load_model(ModelSpec(TINY_MODEL))
    entry = {"method": method, "lr": 5e-3, "max_steps": 80, "batch_size": 16,
             "eval_every": 20, "checkpoint_every": 20, "crop_scale": [0.5, 1.0], **overrides}
    if method == "lora":
        entry["lora"] = lora
    return AdaptedClip.from_settings(loaded, shapes["names"], adaptation_settings("test", entry),
                                     seed, dtype)


def _fit(adapted, shapes, **kwargs):
    paths, labels = shapes["train"]
    val_paths, val_labels = shapes["val"]
    return TrainingLoop(adapted).fit(paths, labels, val_paths, val_labels, adapted.preprocess,
                                     adapted.settings.train.max_steps, **kwargs)


@contextlib.contextmanager
def _on_batch(call):
    """``call(step, labels)`` before the loop takes each batch."""
    real = TrainingBatches.steps

    def steps(self, start, stop):
        for step, images, labels in real(self, start, stop):
            call(step, labels)
            yield step, images, labels

    with mock.patch.object(TrainingBatches, "steps", steps):
        yield


@contextlib.contextmanager
def _batch_sizes():
    """The size of every batch the trainer takes, in order."""
    sizes = []
    with _on_batch(lambda step, labels: sizes.append(len(labels))):
        yield sizes


def _interrupted_at(step: int):
    """Ctrl-C while step ``step`` loads its batch (after the checkpoint at step 40/20)."""
    def interrupt(current, labels):
        if current + 1 == step:
            raise KeyboardInterrupt

    return _on_batch(interrupt)


def _val_accuracy(adapted, shapes) -> float:
    paths, labels = shapes["val"]
    return float((adapted.predict(paths, adapted.preprocess).argmax(1) == labels).mean())


def _assert_same_state(actual: AdaptedClip, expected: AdaptedClip) -> None:
    expected_state = expected.state()
    assert set(actual.state()) == set(expected_state)
    for name, value in actual.state().items():
        torch.testing.assert_close(value, expected_state[name])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lora_learns_for_every_seed(shapes, seed):
    adapted = _adapted(shapes, seed=seed)
    untrained = _val_accuracy(adapted, shapes)
    result = _fit(adapted, shapes)
    loss = result.history["loss"].to_numpy()
    assert loss[-10:].mean() < 0.5 * loss[:10].mean()
    assert result.best_val_accuracy >= untrained + 0.3
    # the last state is kept (select: last), and it was validated at the final step
    assert (result.selected, result.selected_step) == ("last", 80)
    assert _val_accuracy(adapted, shapes) == pytest.approx(
        result.history["val_accuracy"].iloc[-1])
    assert result.trainable_parameters == sum(t.numel() for t in adapted.state().values())
    # 0 is possible: pages freed by earlier work in this process can hold it all
    assert result.peak_memory_mb >= 0 and result.wall_seconds > 0


def test_bitfit_and_linear_head_train_through_the_same_loop(shapes):
    bitfit = _adapted(shapes, method="bitfit")
    assert all(name.endswith(".bias") for name in bitfit.state())
    history = _fit(bitfit, shapes).history
    assert history["loss"][-10:].mean() < history["loss"][:10].mean()

    linear = _adapted(shapes, head="linear", text_alignment_weight=0.3)
    assert {"linear.weight", "linear.bias"} <= set(linear.state())
    result = _fit(linear, shapes)
    assert result.history["loss"][-10:].mean() < result.history["loss"][:10].mean()


def test_interrupted_run_resumes_to_the_same_result(shapes, tmp_path):
    straight = _adapted(shapes)
    expected = _fit(straight, shapes, checkpoint_dir=tmp_path / "a")

    first = _adapted(shapes)
    with pytest.raises(KeyboardInterrupt), _interrupted_at(53):
        _fit(first, shapes, checkpoint_dir=tmp_path / "b")
    assert (tmp_path / "b" / "last").exists()
    # A new process would start from scratch: a fresh model and loop.
    second = _adapted(shapes)
    resumed = _fit(second, shapes, checkpoint_dir=tmp_path / "b")
    assert resumed.steps_done == 80
    np.testing.assert_allclose(resumed.history["loss"], expected.history["loss"], rtol=1e-5)
    assert resumed.best_val_accuracy == expected.best_val_accuracy
    _assert_same_state(second, straight)


def test_checkpoint_left_only_under_its_old_name_is_used(shapes, tmp_path):
    adapted = _adapted(shapes, max_steps=20)
    done = _fit(adapted, shapes, checkpoint_dir=tmp_path)
    (tmp_path / "last").rename(tmp_path / "last.old")
    again = _adapted(shapes, max_steps=20)
    resumed = _fit(again, shapes, checkpoint_dir=tmp_path)
    np.testing.assert_array_equal(resumed.history["loss"], done.history["loss"])
    _assert_same_state(again, adapted)


def test_checkpoint_holds_only_trainable_parameters(shapes, tmp_path):
    adapted = _adapted(shapes, max_steps=None, iterations_per_shot=1)
    paths, labels = shapes["train"]
    loop = TrainingLoop(adapted)
    loop.fit(paths, labels, *shapes["val"], adapted.preprocess, 20, checkpoint_dir=tmp_path)
    saved = load_file(str(tmp_path / "last" / "trainable.safetensors"))
    assert set(saved) == set(adapted.state())
    assert all("lora_" in name for name in saved)
    size = sum(t.numel() for t in saved.values())
    assert size == loop.trainable_count < 0.01 * sum(p.numel() for p in adapted.parameters())
    assert not list(tmp_path.glob(".last-*"))  # no staging folder left behind


def test_changed_settings_refuse_to_resume(shapes, tmp_path):
    adapted = _adapted(shapes)
    with pytest.raises(KeyboardInterrupt), _interrupted_at(25):
        _fit(adapted, shapes, checkpoint_dir=tmp_path)
    other = _adapted(shapes, weight_decay=0.0)
    with pytest.raises(TrainingError, match="other training settings"):
        _fit(other, shapes, checkpoint_dir=tmp_path)


def test_checkpoint_of_other_tensors_names_the_fix(shapes, tmp_path):
    # e.g. one written before the adapter state took peft's names
    adapted = _adapted(shapes, max_steps=20)
    _fit(adapted, shapes, checkpoint_dir=tmp_path)
    trainable = tmp_path / "last" / "trainable.safetensors"
    save_file({f"clip.{n}": t for n, t in load_file(str(trainable)).items()}, str(trainable))
    with pytest.raises(TrainingError, match=r"not this model's trainable ones.*delete it"):
        _fit(_adapted(shapes, max_steps=20), shapes, checkpoint_dir=tmp_path)


def test_merged_export_equals_adapted_model(shapes):
    adapted = _adapted(shapes, max_steps=20)
    _fit(adapted, shapes)
    images = torch.randn(3, 3, 32, 32)
    assert not adapted.training  # the loop leaves the model in eval mode
    with torch.no_grad():
        merged = adapted.merged().eval()
        assert not any("lora" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged.encode_image(images), adapted.clip.encode_image(images),
                                   atol=1e-5, rtol=1e-5)
        tokens = load_model(ModelSpec(TINY_MODEL)).tokenizer(["a photo of a red circle."])
        torch.testing.assert_close(merged.encode_text(tokens), adapted.clip.encode_text(tokens),
                                   atol=1e-5, rtol=1e-5)


def test_vision_only_lora_trains_after_an_evaluation_of_the_untrained_model(shapes):
    # The frozen text tower's class embeddings are cached by the first call, here
    # predict(); training must still be able to backpropagate through them.
    vision_only = {**FAST_LORA, "encoders": "vision"}
    adapted = _adapted(shapes, lora=vision_only, max_steps=4, eval_every=2)
    assert not adapted.text_trains
    _val_accuracy(adapted, shapes)
    result = _fit(adapted, shapes)
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


def test_loop_steps_on_partial_batches(shapes):
    adapted = _adapted(shapes, max_steps=4, batch_size=32, eval_every=None)
    paths, labels = shapes["train"]
    with _batch_sizes() as sizes:
        result = TrainingLoop(adapted).fit(paths[:47], labels[:47], *shapes["val"],
                                           adapted.preprocess, 4)
    assert sizes == [32, 15, 32, 15] and result.steps_done == 4
    assert result.history["val_accuracy"].isna().all()  # eval_every: None never validates
    adapted = _adapted(shapes, max_steps=2, batch_size=32, eval_every=None)
    with _batch_sizes() as sizes:
        TrainingLoop(adapted).fit(paths[:10], labels[:10], *shapes["val"], adapted.preprocess, 2)
    assert sizes == [10, 10]


def test_micro_batches_of_a_partial_batch_give_the_full_batch_gradient(shapes):
    assert micro_batches(10, 4) == [(slice(0, 4), 0.4), (slice(4, 8), 0.4), (slice(8, 10), 0.2)]
    no_dropout = {**FAST_LORA, "dropout": 0.0}
    grads = []
    for accumulation in (1, 4):  # micro-batches of 4: 4 + 4 + 2 of the 10 images
        adapted = _adapted(shapes, lora=no_dropout, max_steps=1, batch_size=16,
                           grad_accumulation=accumulation, eval_every=None)
        paths, labels = shapes["train"]
        TrainingLoop(adapted).fit(paths[:10], labels[:10], *shapes["val"], adapted.preprocess, 1)
        grads.append({n: p.grad.clone() for n, p in adapted.named_parameters() if p.requires_grad})
    assert any(g.abs().max() > 0 for g in grads[0].values())
    for name, grad in grads[0].items():
        assert_close(grads[1][name], grad, rtol=1e-4)


@pytest.mark.parametrize(("select", "saved"), [("last", "trainable"), ("best_val", "best")])
def test_select_keeps_the_last_or_the_best_validated_state(shapes, tmp_path, select, saved):
    adapted = _adapted(shapes, max_steps=20, eval_every=5, select=select)
    result = _fit(adapted, shapes, checkpoint_dir=tmp_path)
    kept = load_file(str(tmp_path / "last" / f"{saved}.safetensors"))
    for name, value in adapted.state().items():
        torch.testing.assert_close(value, kept[name], rtol=0, atol=0)
    assert result.selected == select
    if select == "best_val":
        assert result.selected_step == result.best_step
        assert _val_accuracy(adapted, shapes) == pytest.approx(result.best_val_accuracy)
    else:
        assert result.selected_step == result.steps_done == 20


def test_seed_none_takes_the_few_shot_seed_and_an_explicit_seed_wins(shapes):
    def lora_a(adapted):  # LoRA's initialisation (B starts at zero)
        return torch.cat([t.flatten() for n, t in adapted.state().items() if "lora_A" in n])

    first, again = _adapted(shapes, seed=7), _adapted(shapes, seed=7)
    assert first.settings.train.seed == 7
    torch.testing.assert_close(lora_a(again), lora_a(first), rtol=0, atol=0)
    assert not torch.equal(lora_a(_adapted(shapes, seed=8)), lora_a(first))
    explicit = AdaptedClip.from_settings(load_model(ModelSpec(TINY_MODEL)), shapes["names"],
                                         adaptation_settings("test", {"seed": 3}), seed=7)
    assert explicit.settings.train.seed == 3


@pytest.mark.parametrize(("dtype", "scaled"), [(torch.float16, True), (torch.bfloat16, False)])
def test_half_precisions_train_and_only_fp16_scales_the_loss(shapes, dtype, scaled):
    # CLIP-LoRA trains under fp16 autocast with a GradScaler; bf16 has fp32's range.
    adapted = _adapted(shapes, dtype=dtype, max_steps=2, batch_size=8, eval_every=None)
    loop = TrainingLoop(adapted)
    assert loop.scaler.is_enabled() == scaled
    paths, labels = shapes["train"]
    result = loop.fit(paths, labels, *shapes["val"], adapted.preprocess, 2)
    assert result.steps_done == 2 and np.isfinite(result.history["loss"]).all()


def test_a_checkpoint_loads_onto_the_cpu_whatever_device_wrote_it(shapes, tmp_path, monkeypatch):
    """Tensors saved on CUDA must load on a CPU-only machine: the store maps them to the
    CPU (a GPU cannot be faked here, so the load's arguments are checked)."""
    from clip_lora_pipeline.core import checkpoints

    adapted = _adapted(shapes, max_steps=4)
    _fit(adapted, shapes, checkpoint_dir=tmp_path)
    real_load, seen = torch.load, []

    def load(*args, **kwargs):
        seen.append(kwargs.get("map_location"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "load", load)
    checkpoints.CheckpointStore(tmp_path / "last").load()
    assert seen == ["cpu"]


@pytest.mark.parametrize("head", ["text", "linear"])
def test_logits_and_loss_are_fp32_under_bf16_autocast(shapes, head):
    adapted = _adapted(shapes, head=head, text_alignment_weight=0.5).train()
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = adapted(images)
        loss, _ = training_loss(adapted, images, labels)
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32
    bf16 = _adapted(shapes, head=head, text_alignment_weight=0.5, dtype=torch.bfloat16).train()
    loss, correct = training_loss(bf16, images, labels)  # the loop's own autocast
    assert loss.dtype == torch.float32 and correct.dtype == torch.int64


@pytest.mark.parametrize(("head", "lora"), [
    ("text", FAST_LORA),  # the text tower trains: it runs every step
    ("linear", {**FAST_LORA, "encoders": "vision"}),  # frozen text, alignment logits
])
def test_the_training_forward_reads_nothing_back_from_the_device(shapes, head, lora):
    """On the ``meta`` device tensors have shapes but no values: any host read in the
    forward or the loss (``.tolist()``, ``.item()``, ``int(tensor)``) raises."""
    adapted = _adapted(shapes, head=head, lora=lora, text_alignment_weight=0.5).train()
    adapted.to("meta")
    images = torch.empty(4, 3, 32, 32, device="meta")
    labels = torch.empty(4, dtype=torch.long, device="meta")
    loss, correct = training_loss(adapted, images, labels)
    assert loss.device.type == correct.device.type == "meta" and loss.shape == ()


@pytest.mark.parametrize(("first", "then"), [(torch.float32, torch.float16),
                                             (torch.float16, torch.float32),
                                             (torch.bfloat16, torch.float16)])
def test_a_checkpoint_of_another_precision_resumes_without_raising(shapes, tmp_path, first,
                                                                   then):
    """The scaler's state exists only under fp16: an fp32 checkpoint resumed under fp16
    raised "source state dict is empty". The node gives each precision its own folder;
    the loop itself resumes across precisions, with a fresh scaler where it has none."""
    with pytest.raises(KeyboardInterrupt), _interrupted_at(25):
        _fit(_adapted(shapes, dtype=first, max_steps=30), shapes, checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / "last" / "state.pt", weights_only=True)
    state["rng"]["cuda"] = torch.zeros(16, dtype=torch.uint8)  # as a GPU run writes it
    torch.save(state, tmp_path / "last" / "state.pt")
    result = _fit(_adapted(shapes, dtype=then, max_steps=30), shapes, checkpoint_dir=tmp_path)
    assert result.steps_done == 30 and np.isfinite(result.history["loss"]).all()
    assert result.history["step"].tolist() == list(range(1, 31))


def test_runtime_deterministic_sets_the_flag_for_the_run_only(shapes, monkeypatch):
    seen = []
    real = TrainingLoop._step

    def step(self, images, labels):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return real(self, images, labels)

    monkeypatch.setattr(TrainingLoop, "_step", step)
    baseline = _fit(_adapted(shapes, max_steps=6), shapes)
    strict = _fit(_adapted(shapes, max_steps=6), shapes,
                  runtime=RuntimeSettings(deterministic=True))
    assert seen == [False] * 6 + [True] * 6
    assert not torch.are_deterministic_algorithms_enabled()
    np.testing.assert_array_equal(strict.history["loss"], baseline.history["loss"])


def test_the_linear_head_without_alignment_never_runs_the_text_tower(shapes, monkeypatch):
    from clip_lora_pipeline.core import adapted as adapted_module

    adapted = _adapted(shapes, head="linear", text_alignment_weight=0.0)
    real, calls = adapted_module.encode_text_trimmed, []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(adapted_module, "encode_text_trimmed", counted)
    _fit(adapted, shapes)
    adapted.predict(shapes["val"][0], adapted.preprocess)
    assert calls == []
    aligned = _adapted(shapes, head="linear", text_alignment_weight=0.5, max_steps=2)
    _fit(aligned, shapes)
    assert len(calls) >= 2  # with a weight, every step uses the text head


def test_the_loop_estimates_its_duration_and_names_quicker_settings_when_slow(shapes, caplog):
    # a clock that moves 100 s at every reading: each timed step takes 100 s
    clock = itertools.count(step=100.0)
    adapted = _adapted(shapes, seed=1)
    with mock.patch("clip_lora_pipeline.core.train.time",
                    SimpleNamespace(perf_counter=lambda: next(clock))), \
            caplog.at_level("INFO", logger="clip_lora_pipeline.core.train"):
        _fit(adapted, shapes, quicker="lower adaptation_methods.lora.max_steps")
    # 80 steps: 2 of warm-up and 8 timed, 70 left
    assert "Training lora: about 1 h 56 min for the 70 steps left on cpu (100.00 s a step" \
        in caplog.text
    assert "Over an hour on CPU; for a quicker run, lower adaptation_methods.lora.max_steps." \
        in caplog.text


def test_pace_leaves_out_the_warm_up_and_answers_once():
    pace = Pace(warmup=2, timed=3)
    answers = [pace.add(seconds) for seconds in (9.0, 9.0, 1.0, 2.0, 3.0, 4.0)]
    assert answers == [None, None, None, None, 2.0, None]
