"""One ``adaptation_methods`` entry, checked whole: the training settings (the loop's and
the head's) and the backbone method's own (under ``lora:`` or ``bitfit:``). The pipeline
registry checks every entry with ``adaptation_settings`` before any node runs, so a typo
fails at once and names ``adaptation_methods.<name>.<key>`` and what it may be."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clip_lora_pipeline.core import settings as typed
from clip_lora_pipeline.core.backbone import (
    BackboneMethod,
    SettingError,
    is_int,
    is_number,
)
from clip_lora_pipeline.core.backbone_methods import BACKBONE_METHODS
from clip_lora_pipeline.core.errors import SettingsError

HEADS = ("text", "linear")
SELECTS = ("last", "best_val")


def _positive_int(value: Any) -> bool:
    return is_int(value) and value >= 1


def _crop_scale(value: Any) -> bool:
    return (isinstance(value, tuple) and len(value) == 2 and all(map(is_number, value))
            and 0 < value[0] <= value[1] <= 1)


# key: (check, what the value may be)
_RULES = {
    "method": (lambda v: isinstance(v, str) and v in BACKBONE_METHODS,
               f"one of {sorted(BACKBONE_METHODS)}"),
    "head": (lambda v: v in HEADS, f"one of {list(HEADS)}"),
    "text_alignment_weight": (lambda v: is_number(v) and v >= 0, "a number >= 0"),
    "template": (lambda v: isinstance(v, str) and "{}" in v,
                 "a string with {} where the class name goes"),
    "lr": (lambda v: is_number(v) and v > 0, "a number > 0"),
    "weight_decay": (lambda v: is_number(v) and v >= 0, "a number >= 0"),
    "min_lr": (lambda v: is_number(v) and v >= 0, "a number >= 0"),
    "iterations_per_shot": (_positive_int, "an integer >= 1"),
    "max_steps": (lambda v: v is None or _positive_int(v), "null or an integer >= 1"),
    "batch_size": (_positive_int, "an integer >= 1"),
    "grad_accumulation": (_positive_int, "an integer >= 1"),
    "eval_every": (lambda v: v is None or _positive_int(v), "null (never) or an integer >= 1"),
    "patience": (lambda v: v is None or _positive_int(v), "null or an integer >= 1"),
    "checkpoint_every": (_positive_int, "an integer >= 1"),
    "seed": (lambda v: v is None or is_int(v), "null (the few-shot seed) or an integer"),
    "select": (lambda v: v in SELECTS, f"one of {list(SELECTS)}"),
    "crop_scale": (_crop_scale, "[low, high] with 0 < low <= high <= 1"),
}


@dataclass(frozen=True)
class TrainSettings:
    """Defaults follow CLIP-LoRA: AdamW 2e-4, wd 1e-2, cosine to 1e-6, 500 x shots
    optimizer steps at batch 32 (shuffled epochs, partial last batch), RandomResizedCrop
    (scale 0.08-1, bicubic) + flip, and the last state kept (``select: last``; CLIP-LoRA
    never validates). ``seed`` None: the few-shot seed (``AdaptationSettings.seeded``),
    so one seed drives both the sample and the training."""

    method: str = "lora"
    head: str = "text"
    text_alignment_weight: float = 0.0
    template: str = "a photo of a {}."
    lr: float = 2e-4
    weight_decay: float = 1e-2
    min_lr: float = 1e-6
    iterations_per_shot: int = 500
    max_steps: int | None = None  # overrides iterations_per_shot x shots
    batch_size: int = 32
    grad_accumulation: int = 1
    eval_every: int | None = 50  # validation every N steps (curves); None = never
    patience: int | None = None  # evaluations without improvement before stopping
    checkpoint_every: int = 50
    seed: int | None = None
    select: str = "last"  # last: the final state; best_val: the best validated state
    crop_scale: tuple[float, float] = (0.08, 1.0)

    def __post_init__(self) -> None:
        for key, (ok, allowed) in _RULES.items():
            if not ok(getattr(self, key)):
                raise SettingError(f"{key} must be {allowed}; got {getattr(self, key)!r}.")
        if self.batch_size % self.grad_accumulation:
            raise SettingError(f"batch_size must be a multiple of grad_accumulation; got "
                               f"{self.batch_size} and {self.grad_accumulation}.")
        if self.eval_every is None and self.select == "best_val":
            raise SettingError("select: best_val needs eval_every; set it, or select: last.")
        if self.patience is not None and self.select != "best_val":
            # Stopping at a plateau would keep a state that is neither best nor final.
            raise SettingError("patience needs select: best_val; set patience: null or "
                               "select: best_val.")

    def total_steps(self, shots: int | None) -> int:
        if self.max_steps is not None:
            return self.max_steps
        if shots is None:
            raise SettingError("max_steps must be set when shots is null (there is no shot "
                               "count for iterations_per_shot).")
        return self.iterations_per_shot * shots


@dataclass(frozen=True)
class AdaptationSettings:
    """An ``adaptation_methods`` entry, checked: ``method`` is the backbone method
    (``core.backbone_methods``) and ``method_settings`` its own settings."""

    name: str
    train: TrainSettings
    method: BackboneMethod
    method_settings: Any

    def seeded(self, seed: int) -> AdaptationSettings:
        """``train.seed`` None (the default) becomes ``seed``, the few-shot seed."""
        if self.train.seed is not None:
            return self
        return dataclasses.replace(self, train=dataclasses.replace(self.train, seed=seed))

    def params(self) -> dict[str, Any]:
        """The entry with every default filled in; ``adaptation_settings`` takes it back."""
        return {**dataclasses.asdict(self.train),
                self.method.name: dataclasses.asdict(self.method_settings)}


def adaptation_settings(name: str, params: Any) -> AdaptationSettings:
    """The entry ``adaptation_methods.<name>``, checked whole. Any unknown key or wrong
    value, at its top level or under ``lora:`` / ``bitfit:``, raises a ValueError naming
    ``adaptation_methods.<name>.<key>`` and what is allowed there."""
    where = f"adaptation_methods.{name}"
    params = {} if params is None else params  # an empty YAML entry: the defaults
    _check_mapping(params, where)
    kind = params.get("method", TrainSettings.method)
    if not isinstance(kind, str) or kind not in BACKBONE_METHODS:
        raise SettingsError(f"{where}.method is {kind!r}; allowed: {sorted(BACKBONE_METHODS)}.")
    method = BACKBONE_METHODS[kind]
    train_keys = [f.name for f in dataclasses.fields(TrainSettings)]
    unknown = sorted(set(params) - {*train_keys, method.name})
    if unknown:
        raise SettingsError(f"{', '.join(f'{where}.{k}' for k in unknown)}: unknown with method "
                            f"{kind}; {where} takes {sorted([*train_keys, method.name])}.")
    train_values = {**method.train_defaults,
                    **{k: v for k, v in params.items() if k != method.name}}
    train = _build(TrainSettings, train_values, where)
    try:
        method.check_train(train)
    except SettingError as exc:  # its message starts with the key
        raise SettingsError(f"{where}.{exc}") from None
    own = params.get(method.name)
    _check_mapping(own, f"{where}.{method.name}", optional=True)
    return AdaptationSettings(name, train, method,
                              _build(method.Settings, own, f"{where}.{method.name}"))


def _check_mapping(value: Any, where: str, optional: bool = False) -> None:
    if not isinstance(value, Mapping) and not (optional and value is None):
        raise SettingsError(f"{where} must map settings to values (see "
                            f"conf/base/parameters_lora.yml); got {value!r}.")


def _build(cls: type, values: Mapping[str, Any] | None, where: str) -> Any:
    try:
        return typed.from_params(cls, values, where)
    except SettingError as exc:  # its message starts with the key
        raise SettingsError(f"{where}.{exc}") from None
