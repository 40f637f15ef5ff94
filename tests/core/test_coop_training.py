"""CoOp through the training loop on generated shapes with the tiny random model: it
learns, with one context for all classes and with one per class, for several seeds;
and with SGD, a warm-up and the cosine it resumes after interruptions (in the warm-up
and after it) to the same result as an uninterrupted run.

The tiny model's towers are random and frozen, and SGD at CoOp's published 2e-3 (or at
anything from 0.05 to 10 tried here) hardly moves its context in a test's budget; the
learning tests train with AdamW, the code path of the context being the same.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clip_lora_pipeline.core.train import TrainingLoop
from tests.core.test_train import (  # the LoRA tests' data and helpers
    _adapted,
    _assert_same_state,
    _fit,
    _interrupted_at,
    _val_accuracy,
)

QUICK = {"method": "coop", "optimizer": "adamw", "weight_decay": 0.0, "warmup_epochs": 0,
         "max_steps": 30, "eval_every": 30}


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(("class_specific", "lr", "margin"), [
    (False, 0.03, 0.12),  # one context: the class names alone tell the prompts apart
    (True, 0.01, 0.25),
])
def test_coop_learns_for_every_seed(shapes, seed, class_specific, lr, margin):
    adapted = _adapted(shapes, seed=seed, **QUICK, lr=lr,
                       coop={"class_specific": class_specific})
    untrained = _val_accuracy(adapted, shapes)
    before = {n: t.clone() for n, t in adapted.state().items()}
    result = _fit(adapted, shapes)
    loss = result.history["loss"].to_numpy()
    assert loss[-10:].mean() < 0.8 * loss[:10].mean()
    assert result.best_val_accuracy >= untrained + margin
    assert _val_accuracy(adapted, shapes) == pytest.approx(result.best_val_accuracy)
    assert set(before) == {"prompt_context.vectors"}  # the context is all that trained
    assert not torch.equal(before["prompt_context.vectors"],
                           adapted.state()["prompt_context.vectors"])


SGD_WARMUP = {"method": "coop", "optimizer": "sgd", "lr": 0.1, "warmup_epochs": 2,
              "warmup_lr": 1e-3, "max_steps": 24, "checkpoint_every": 5, "eval_every": 10,
              "coop": {"class_specific": True}}


def test_sgd_with_warm_up_and_cosine_resumes_to_the_same_result(shapes, tmp_path):
    straight = _adapted(shapes, **SGD_WARMUP)
    assert isinstance(TrainingLoop(straight).optimizer, torch.optim.SGD)
    expected = _fit(straight, shapes, checkpoint_dir=tmp_path / "a")
    lr = expected.history["lr"].to_numpy()  # the lr after each step: the next step's
    # 96 images at batch 16: 6 steps an epoch, 12 of warm-up, then the cosine
    np.testing.assert_allclose(lr[:11], 1e-3, rtol=1e-6)
    assert lr[11] == pytest.approx(0.1) and lr[12] < lr[11] and lr[-1] < lr[12]

    # interrupted in the warm-up (resumes from step 10), then in the cosine (from 15)
    for step in (13, 19):
        with pytest.raises(KeyboardInterrupt), _interrupted_at(step):
            _fit(_adapted(shapes, **SGD_WARMUP), shapes, checkpoint_dir=tmp_path / "b")
    resumed_model = _adapted(shapes, **SGD_WARMUP)
    resumed = _fit(resumed_model, shapes, checkpoint_dir=tmp_path / "b")
    assert resumed.steps_done == 24
    np.testing.assert_allclose(resumed.history["loss"], expected.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(resumed.history["lr"], lr, rtol=1e-12)
    assert resumed.best_val_accuracy == expected.best_val_accuracy
    _assert_same_state(resumed_model, straight)
