"""Methods on cached features by name. Pipelines, catalog entries, report rows and
``predict`` are derived from this table: adding a method is its module, its test, a line
here and, if it needs settings, an entry in ``feature_methods`` of the parameters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any

import numpy as np

from clip_lora_pipeline.core.methods.base import FeatureMethod, Fitted, MethodError
from clip_lora_pipeline.core.methods.clap import Clap
from clip_lora_pipeline.core.methods.linear_probe import LinearProbe
from clip_lora_pipeline.core.methods.meta_adapter import MetaAdapter
from clip_lora_pipeline.core.methods.text_init_head import TextInitHead
from clip_lora_pipeline.core.methods.tip_adapter import TipAdapter
from clip_lora_pipeline.core.methods.tip_adapter_f import TipAdapterF

FEATURE_METHODS: dict[str, FeatureMethod] = {
    method.name: method for method in (
        LinearProbe(), TextInitHead(), TipAdapter(), TipAdapterF(), Clap(), MetaAdapter())
}


def get_feature_method(name: str) -> FeatureMethod:
    try:
        return FEATURE_METHODS[name]
    except KeyError:
        close = get_close_matches(str(name), FEATURE_METHODS, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise MethodError(f"unknown feature method {name!r}.{hint} Known: "
                          f"{sorted(FEATURE_METHODS)}.") from None


RESERVED_PREFIX = "zero_shot"  # the reports name zero-shot rows zero_shot_<prompt set>


@dataclass(frozen=True)
class FeatureMethodEntry:
    """One entry of the ``feature_methods`` parameter, its settings built and checked."""

    name: str
    method: FeatureMethod
    settings: Any

    @property
    def prompt_set(self) -> str | None:
        return self.settings.prompt_set if self.method.uses_text else None


def feature_method_entries(params: Any, prompt_sets: Sequence[str]) -> list[FeatureMethodEntry]:
    """Every ``feature_methods`` entry (name -> {method: <kind>, settings...}) with its
    settings validated, so a typo fails before any node runs, naming the key."""
    if params is None:
        return []
    if not isinstance(params, dict):
        raise MethodError(f"parameter 'feature_methods' must map a name to settings "
                          f"({{method: <kind>, ...}}); got {params!r}.")
    entries = []
    for name, values in params.items():
        where = f"feature_methods.{name}"
        if name.startswith(RESERVED_PREFIX):
            raise MethodError(f"{where}: names starting with '{RESERVED_PREFIX}' are the "
                              "reports' zero-shot rows; rename it.")
        if not isinstance(values, dict) or "method" not in values:
            raise MethodError(f"{where} must map 'method' (one of {sorted(FEATURE_METHODS)}) "
                              f"and its settings; got {values!r}.")
        try:
            method = get_feature_method(values["method"])
            entry = FeatureMethodEntry(name, method, method.settings(values))
        except MethodError as exc:
            raise MethodError(f"{where}: {exc}") from None
        if entry.prompt_set is not None and entry.prompt_set not in prompt_sets:
            raise MethodError(f"{where}.prompt_set is {entry.prompt_set!r}; it must be an "
                              f"entry of 'prompt_sets': {list(prompt_sets)}.")
        entries.append(entry)
    return entries


def to_artifact(fitted: Fitted, name: str, classes: list[str]) -> dict[str, Any]:
    """What the catalog stores (safetensors): the arrays as tensors, and the config to
    rebuild the model (its kind, class names and what was selected)."""
    import torch

    return {"tensors": {k: torch.from_numpy(np.ascontiguousarray(v))
                        for k, v in fitted.arrays.items()},
            "config": {"method": fitted.method, "name": name, "classes": list(classes),
                       "config": fitted.config, "selected": fitted.selected,
                       "trainable_parameters": fitted.trainable_parameters}}


def from_artifact(artifact: dict[str, Any]) -> tuple[FeatureMethod, Fitted, list[str]]:
    """The method, the fitted model and the class names back from ``to_artifact``'s."""
    config = artifact["config"]
    fitted = Fitted(config["method"], {k: v.numpy() for k, v in artifact["tensors"].items()},
                    config["config"], config["selected"],
                    trainable_parameters=config["trainable_parameters"])
    return get_feature_method(config["method"]), fitted, list(config["classes"])
