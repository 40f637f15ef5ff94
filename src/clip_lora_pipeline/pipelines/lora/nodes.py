"""Thin wrappers over ``core.adapted`` and ``core.train``: train an adapted model,
evaluate it, export it merged."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import pandas as pd

from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.adaptation_settings import adaptation_settings
from clip_lora_pipeline.core.adapted import AdaptedClip, load_clip
from clip_lora_pipeline.core.adapted_eval import score_adapter
from clip_lora_pipeline.core.attention import open_clip_state_dict
from clip_lora_pipeline.core.backbone import SettingError
from clip_lora_pipeline.core.errors import SettingsError
from clip_lora_pipeline.core.generated import GeneratedImages
from clip_lora_pipeline.core.manifest import class_table
from clip_lora_pipeline.core.model_id import model_slug, uses_quick_gelu
from clip_lora_pipeline.core.models import release_shared_model
from clip_lora_pipeline.core.runtime import RuntimeSettings
from clip_lora_pipeline.core.train import TrainingLoop

logger = logging.getLogger(__name__)


def _paths(frame: pd.DataFrame, dataset: dict[str, Any]) -> list[str]:
    return [storage.join(dataset["root"], p) for p in frame["path"]]


def train_adapter(
    train: pd.DataFrame, val: pd.DataFrame, manifest: pd.DataFrame, dataset: dict[str, Any],
    model_params: dict[str, Any], runtime: dict[str, Any], shots: int | None,
    method: dict[str, Any], checkpoint_root: str, name: str, seed: int,
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Train the entry ``adaptation_methods.<name>`` (``method``); returns the adapter
    (trainable tensors + config), history and a summary. ``seed``: the few-shot seed,
    which also drives training unless the entry sets one.

    Checkpoints go under ``checkpoint_root`` in a folder named by everything the result
    depends on, so an interrupted run resumes and a changed one starts afresh.
    """
    settings = adaptation_settings(name, method)
    generated = settings.generated and GeneratedImages.for_training(
        settings.generated, train["path"].tolist())
    run_settings = RuntimeSettings.from_params(runtime)
    release_shared_model()  # the encoding nodes' model: not needed while this trains
    loaded, dtype = load_clip(model_params, runtime)
    adapted = AdaptedClip.from_settings(loaded, class_table(manifest), settings, seed, dtype)
    identity = json.dumps({
        "model": model_slug(loaded.spec), "method": method, "root": dataset["root"],
        "train": sorted(train["path"]), "val": sorted(val["path"]), "seed": seed,
        # another precision or device cannot resume this run's optimiser and scaler state
        "precision": str(dtype), "device": loaded.device.type,
        **({"generated": generated.fingerprint()} if generated else {}),
    }, sort_keys=True, default=str)
    folder = storage.data_path(checkpoint_root) / hashlib.sha1(identity.encode()).hexdigest()[:16]
    train_settings = adapted.settings.train
    try:
        steps = train_settings.total_steps(shots, len(train))
    except SettingError as exc:  # its message starts with the key
        raise SettingsError(f"adaptation_methods.{name}.{exc}") from None
    quicker = (f"lower adaptation_methods.{name}.max_steps (now {steps} steps) or pick a "
               f"smaller model: model.name in conf/<env>/globals.yml (now "
               f"{model_params['name']}; ViT-B-32 has a quarter of ViT-B-16's image tokens)")
    result = TrainingLoop(adapted).fit(
        _paths(train, dataset), train["label"].tolist(), _paths(val, dataset),
        val["label"].to_numpy(), loaded.preprocess, steps,
        checkpoint_dir=folder, runtime=run_settings, quicker=quicker, generated=generated,
    )
    summary = {
        "method": train_settings.method, "shots": shots, "steps": result.steps_done,
        "trainable_parameters": result.trainable_parameters,
        "training_seconds": result.wall_seconds, "peak_memory_mb": result.peak_memory_mb,
        "peak_memory_kind": result.peak_memory_kind,
        "best_step": result.best_step, "best_val_accuracy": result.best_val_accuracy,
        "selected": result.selected, "selected_step": result.selected_step,
        "seed": train_settings.seed,
        "stopped_early": result.stopped_early, "checkpoint": str(folder),
        **({"generated_images": generated.counts()} if generated else {}),
    }
    logger.info("%s: %d trainable parameters; kept the %s state (step %d)",
                train_settings.method, result.trainable_parameters, result.selected,
                result.selected_step)
    return adapted.artifact(model_params), result.history, summary


def evaluate_adapter(
    test: pd.DataFrame, adapter: dict[str, Any], summary: dict[str, Any],
    dataset: dict[str, Any], model_params: dict[str, Any], runtime: dict[str, Any],
    embedding_store: str | None = None,
) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """The trained model's metrics and tables on the full test split; its logits are
    kept per image in ``embedding_store`` under the adapter's identity."""
    metrics, per_class, predictions = score_adapter(
        adapter, test, dataset["root"], model_params, runtime, embedding_store)
    metrics.update({k: summary[k] for k in (
        "method", "shots", "trainable_parameters", "training_seconds", "peak_memory_mb")})
    return metrics, per_class, predictions


def export_merged(
    adapter: dict[str, Any], model_params: dict[str, Any], runtime: dict[str, Any]
) -> dict[str, Any]:
    """Plain open_clip weights with the adapter merged in; load them with
    ``open_clip.create_model(name, pretrained=<this file>, force_quick_gelu=<config's
    quick_gelu>)``. A method whose parts cannot be merged (``mergeable`` False: learned
    prompts) exports its adapter's tensors as trained, with ``merged: false``;
    ``predict`` loads those like any adapter."""
    adapted = AdaptedClip.from_artifact(adapter, model_params, runtime)
    mergeable = adapted.settings.method.mergeable
    config = {"model": model_params["name"], "adapter": adapter["config"]["method"],
              "quick_gelu": uses_quick_gelu(adapted.spec), "merged": mergeable}
    tensors = open_clip_state_dict(adapted.merged()) if mergeable else adapter["tensors"]
    return {"tensors": tensors, "config": config}
