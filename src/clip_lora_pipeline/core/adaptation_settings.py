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
from clip_lora_pipeline.core.batches import batches_per_epoch
from clip_lora_pipeline.core.errors import SettingsError
from clip_lora_pipeline.core.generated import GeneratedSettings

HEADS = ("text", "linear")
SELECTS = ("last", "best_val")
OPTIMIZERS = ("adamw", "sgd")


def _positive_int(value: Any) -> bool:
    return is_int(value) and value >= 1


def _epochs(value: Any) -> bool:
    return value is None or _positive_int(value) or (
        isinstance(value, dict) and bool(value)
        and all(_positive_int(k) and _positive_int(v) for k, v in value.items()))


def _shot_keys(epochs: Mapping[Any, Any]) -> dict[Any, Any]:
    """Shots as integers, in order: a stored adapter's config comes back from JSON with
    "1", "16", "2"."""
    keys = {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in epochs.items()}
    return dict(sorted(keys.items())) if all(map(is_int, keys)) else keys


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
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {list(OPTIMIZERS)}"),
    "lr": (lambda v: is_number(v) and v > 0, "a number > 0"),
    "momentum": (lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (lambda v: is_number(v) and v >= 0, "a number >= 0"),
    "min_lr": (lambda v: is_number(v) and v >= 0, "a number >= 0"),
    "iterations_per_shot": (_positive_int, "an integer >= 1"),
    "epochs": (_epochs, "null, an integer >= 1, or shots -> epochs such as {1: 50, 2: 100}"),
    "max_steps": (lambda v: v is None or _positive_int(v), "null or an integer >= 1"),
    "warmup_epochs": (lambda v: is_int(v) and v >= 0, "an integer >= 0"),
    "warmup_lr": (lambda v: is_number(v) and v > 0, "a number > 0"),
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
    so one seed drives both the sample and the training. A method's published recipe
    changes some (``BackboneMethod.train_defaults``: CoOp's SGD, epochs and warm-up)."""

    method: str = "lora"
    head: str = "text"
    text_alignment_weight: float = 0.0
    template: str = "a photo of a {}."
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 2e-4
    momentum: float = 0.9  # SGD's; AdamW has none
    weight_decay: float = 1e-2
    min_lr: float = 1e-6
    iterations_per_shot: int = 500
    # epochs x batches per epoch instead of iterations_per_shot x shots: an integer, or
    # by shots ({1: 50, 2: 100}: the entry for the largest shots <= the run's)
    epochs: int | dict[int, int] | None = None
    max_steps: int | None = None  # overrides both
    warmup_epochs: int = 0  # epochs at a constant warmup_lr before the cosine schedule
    warmup_lr: float = 1e-5
    batch_size: int = 32
    grad_accumulation: int = 1
    eval_every: int | None = 50  # validation every N steps (curves); None = never
    patience: int | None = None  # evaluations without improvement before stopping
    checkpoint_every: int = 50
    seed: int | None = None
    select: str = "last"  # last: the final state; best_val: the best validated state
    crop_scale: tuple[float, float] = (0.08, 1.0)

    def __post_init__(self) -> None:
        if isinstance(self.epochs, Mapping):
            object.__setattr__(self, "epochs", _shot_keys(self.epochs))
        for key, (ok, allowed) in _RULES.items():
            if not ok(getattr(self, key)):
                raise SettingError(f"{key} must be {allowed}; got {getattr(self, key)!r}.")
        if self.batch_size % self.grad_accumulation:
            raise SettingError(f"batch_size must be a multiple of grad_accumulation; got "
                               f"{self.batch_size} and {self.grad_accumulation}.")
        if self.warmup_epochs and self.warmup_lr > self.lr:
            raise SettingError(f"warmup_lr must be at most lr ({self.lr}) for a warm-up; got "
                               f"{self.warmup_lr}.")
        if self.eval_every is None and self.select == "best_val":
            raise SettingError("select: best_val needs eval_every; set it, or select: last.")
        if self.patience is not None and self.select != "best_val":
            # Stopping at a plateau would keep a state that is neither best nor final.
            raise SettingError("patience needs select: best_val; set patience: null or "
                               "select: best_val.")

    def total_steps(self, shots: int | None, train_images: int | None = None) -> int:
        """``max_steps``; else ``epochs`` (for ``shots``) x batches per epoch of
        ``train_images``; else ``iterations_per_shot`` x ``shots``."""
        if self.max_steps is not None:
            return self.max_steps
        if self.epochs is not None:
            if train_images is None:
                raise ValueError("total_steps needs train_images where epochs is set.")
            return self.epochs_for(shots) * batches_per_epoch(train_images, self.batch_size)
        if shots is None:
            raise SettingError("max_steps must be set when shots is null (there is no shot "
                               "count for iterations_per_shot).")
        return self.iterations_per_shot * shots

    def epochs_for(self, shots: int | None) -> int:
        """``epochs``, or its entry for the largest shots up to ``shots``."""
        if not isinstance(self.epochs, dict):
            return self.epochs
        if shots is None:
            raise SettingError("epochs maps shots to epochs, but shots is null (all images); "
                               "set epochs to an integer, or max_steps.")
        fitting = [k for k in self.epochs if k <= shots]
        if not fitting:
            raise SettingError(f"epochs has no entry for {shots} shot(s) or fewer (it maps "
                               f"{sorted(self.epochs)}); add one, or set max_steps.")
        return self.epochs[max(fitting)]


@dataclass(frozen=True)
class AdaptationSettings:
    """An ``adaptation_methods`` entry, checked: ``method`` is the backbone method
    (``core.backbone_methods``) and ``method_settings`` its own settings; ``generated``
    the generated images it trains with (``core.generated``), if any."""

    name: str
    train: TrainSettings
    method: BackboneMethod
    method_settings: Any
    generated: GeneratedSettings | None = None

    def seeded(self, seed: int) -> AdaptationSettings:
        """``train.seed`` None (the default) becomes ``seed``, the few-shot seed."""
        if self.train.seed is not None:
            return self
        return dataclasses.replace(self, train=dataclasses.replace(self.train, seed=seed))

    def params(self) -> dict[str, Any]:
        """The entry with every default filled in; ``adaptation_settings`` takes it back."""
        generated = {"generated": dataclasses.asdict(self.generated)} if self.generated else {}
        return {**dataclasses.asdict(self.train),
                self.method.name: dataclasses.asdict(self.method_settings), **generated}


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
    own_keys = [method.name, "generated"]
    unknown = sorted(set(params) - {*train_keys, *own_keys})
    if unknown:
        raise SettingsError(f"{', '.join(f'{where}.{k}' for k in unknown)}: unknown with method "
                            f"{kind}; {where} takes {sorted([*train_keys, *own_keys])}.")
    train_values = {**method.train_defaults,
                    **{k: v for k, v in params.items() if k not in own_keys}}
    train = _build(TrainSettings, train_values, where)
    try:
        method.check_train(train)
    except SettingError as exc:  # its message starts with the key
        raise SettingsError(f"{where}.{exc}") from None
    own = params.get(method.name)
    _check_mapping(own, f"{where}.{method.name}", optional=True)
    generated = params.get("generated")
    _check_mapping(generated, f"{where}.generated", optional=True)
    return AdaptationSettings(name, train, method,
                              _build(method.Settings, own, f"{where}.{method.name}"),
                              None if generated is None else
                              _build(GeneratedSettings, generated, f"{where}.generated"))


def _check_mapping(value: Any, where: str, optional: bool = False) -> None:
    if not isinstance(value, Mapping) and not (optional and value is None):
        raise SettingsError(f"{where} must map settings to values (see "
                            f"conf/base/parameters_lora.yml); got {value!r}.")


def _build(cls: type, values: Mapping[str, Any] | None, where: str) -> Any:
    try:
        return typed.from_params(cls, values, where)
    except SettingError as exc:  # its message starts with the key
        raise SettingsError(f"{where}.{exc}") from None
