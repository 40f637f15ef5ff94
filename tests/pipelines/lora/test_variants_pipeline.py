"""A LoRA variant (VeRA, whose adapter also holds its frozen shared projections) and 2SFS
through the lora pipeline with SequentialRunner, as LoRA goes: trained, evaluated,
exported merged into plain open_clip weights, and predicted from their adapters."""

from __future__ import annotations

import numpy as np
import open_clip
import torch
from kedro.runner import SequentialRunner

from clip_lora_pipeline.core.adapted import AdaptedClip
from clip_lora_pipeline.core.predict import logits_from_adapter
from clip_lora_pipeline.pipelines.lora.pipeline import for_cell
from tests.pipelines.lora import test_lora_pipeline as lora_test

data = lora_test.data  # the generated dataset and its splits, a module fixture
QUICK = {**lora_test.FAST, "max_steps": 10, "eval_every": 5, "checkpoint_every": 5}
METHODS = {
    "vera": {"method": "lora", **QUICK, "lr": 5e-2, "lora": {"variant": "vera", "r": 16}},
    "two_stage": {"method": "two_stage", **QUICK, "lr": 1e-2},
}
OUT, MODEL, CELL = lora_test.OUT, lora_test.MODEL, lora_test.CELL


def test_variants_train_evaluate_export_and_predict_like_lora(tmp_path, data, monkeypatch):
    monkeypatch.setattr(lora_test, "METHODS", METHODS)
    catalog = lora_test._catalog(tmp_path, data)
    SequentialRunner().run(for_cell("shapes", CELL, list(METHODS)), catalog)
    dataset, _, _, _, test = data
    images = torch.randn(2, 3, 32, 32)
    for method in METHODS:
        prefix = f"{OUT}.adapted_{method}"
        metrics, summary = catalog.load(f"{prefix}_metrics"), catalog.load(f"{prefix}_summary")
        assert metrics["n_images"] == len(test) and metrics["method"] == METHODS[method]["method"]
        assert summary["steps"] == 10 and summary["trainable_parameters"] > 0
        history = catalog.load(f"{prefix}_history")
        assert history["step"].tolist() == list(range(1, 11))
        validated = history["step"][history["val_accuracy"].notna()].tolist()
        # 2SFS's stage 1 (6 of the 10 steps) is validated at its end too
        assert validated == ([5, 6, 10] if method == "two_stage" else [5, 10])
        adapter = catalog.load(f"{prefix}_adapter")
        adapted = AdaptedClip.from_artifact(adapter, MODEL, lora_test.RUNTIME)
        plain = open_clip.create_model(lora_test.TINY_MODEL,
                                       pretrained=str(tmp_path / method / "merged.safetensors"))
        with torch.no_grad():
            torch.testing.assert_close(plain.eval().encode_image(images),
                                       adapted.clip.encode_image(images), atol=1e-5, rtol=1e-5)
        logits, classes = logits_from_adapter(test, dataset["root"], adapter, MODEL,
                                              lora_test.RUNTIME)
        predictions = catalog.load(f"{prefix}_predictions")
        names = np.asarray(classes)[logits.argmax(1)]
        assert (names == predictions["predicted_class"].to_numpy()).all()
    vera = catalog.load(f"{OUT}.adapted_vera_adapter")["tensors"]
    assert {n for n in vera if "vera_lambda" not in n} == {"base_model.vera_A", "base_model.vera_B"}
    two_stage = catalog.load(f"{OUT}.adapted_two_stage_adapter")["tensors"]
    summary = catalog.load(f"{OUT}.adapted_two_stage_summary")
    head = two_stage["linear.weight"].numel()
    assert summary["trainable_parameters"] == head + sum(
        t.numel() for n, t in two_stage.items() if "ln_tuning_layers" in n)
    assert set(two_stage) - {"linear.weight", "linear.bias"} == {
        n for n in two_stage if "ln_tuning_layers" in n}
