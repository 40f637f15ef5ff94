"""What every method that learns on cached CLIP features provides.

A feature method fits on one few-shot cell's embeddings (train and val, never test),
and returns a ``Fitted`` model: named arrays plus a JSON-able config, from which
``logits`` are computed for any L2-normalised image features. The arrays and config
are all that is stored and all that ``predict`` needs, so a fitted model is saved,
reloaded and evaluated the same way whatever the method.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from clip_lora_pipeline.core import settings
from clip_lora_pipeline.core.errors import UserError


class MethodError(UserError, ValueError):
    """A method's settings or inputs that cannot work."""


def check_settings(owner: str, integers: dict[str, Any] = (), numbers: dict[str, Any] = ()
                   ) -> None:
    """Settings that must be integers >= 1 (``integers``) or numbers (``numbers``), named
    in the error: YAML gives 13.0 or true as easily as 13."""
    for name, value in dict(integers).items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MethodError(f"{owner}: setting {name!r} must be an integer >= 1; got "
                              f"{value!r}.")
    for name, value in dict(numbers).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MethodError(f"{owner}: setting {name!r} must be a number; got {value!r}.")


@dataclass(frozen=True)
class FeatureSet:
    """One cell's cached features. Rows are L2-normalised image embeddings.

    ``text``: the zero-shot classifier of the method's prompt set, one normalised class
    embedding per row in label order (shape (classes, 0) for a method that does not use
    text), and ``logit_scale`` the CLIP model's (100 for OpenAI weights).
    ``train_views``: augmented views of every train image, (n, V, d), when the method
    asked for them (``uses_views``)."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    text: np.ndarray
    logit_scale: float
    train_views: np.ndarray | None = None

    @property
    def n_classes(self) -> int:
        return len(self.text)

    def zero_shot_logits(self, x: np.ndarray) -> np.ndarray:
        return linear_logits(zero_shot_head(self.text, self.logit_scale), x)


@dataclass
class Fitted:
    """A fitted feature model. ``arrays`` and ``config`` are what is stored; ``selected``
    holds what was chosen on val (hyper-parameters, epochs), ``search`` the val
    accuracy of every candidate tried (None when nothing is searched)."""

    method: str
    arrays: dict[str, np.ndarray]
    config: dict[str, Any] = field(default_factory=dict)
    selected: dict[str, Any] = field(default_factory=dict)
    search: pd.DataFrame | None = None
    trainable_parameters: int = 0
    fit_seconds: float = float("nan")


class FeatureMethod(ABC):
    """A method on cached features. Subclasses set ``name``, ``Settings`` (a frozen
    dataclass validated in ``__post_init__``), ``description``, and implement ``fit``
    and ``logits``. Register the class in ``core.methods.registry``."""

    name: ClassVar[str]
    Settings: ClassVar[type]
    description: ClassVar[str] = ""
    learns_on: ClassVar[str] = "cached features"  # backbone methods: core.backbone
    uses_views: ClassVar[bool] = False  # wants FeatureSet.train_views
    uses_text: ClassVar[bool] = True  # wants FeatureSet.text (a zero-shot classifier)

    def settings(self, params: dict[str, Any] | None) -> Any:
        """The method's settings from its parameters entry (``method`` names the kind);
        a wrong key names itself and the keys the method takes."""
        values = {k: v for k, v in (params or {}).items() if k != "method"}
        return settings.from_params(self.Settings, values, self.name, MethodError)

    def fit_timed(self, data: FeatureSet, settings: Any) -> Fitted:
        """``fit`` on one torch thread, timed. These fits are thousands of tiny ops:
        on this project's 2-core CI machine under load, torch's threads contended and
        a CLAP fit took 18-112 s instead of 3.7 s on one thread."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        start = time.perf_counter()
        try:
            fitted = self.fit(data, settings)
        finally:
            torch.set_num_threads(threads)
        fitted.fit_seconds = time.perf_counter() - start
        return fitted

    @abstractmethod
    def fit(self, data: FeatureSet, settings: Any) -> Fitted:
        """Learn from train (and select on val, if anything is selected). Never sees
        test data."""

    @abstractmethod
    def logits(self, fitted: Fitted, x: np.ndarray) -> np.ndarray:
        """(rows, classes) logits for L2-normalised image features ``x``."""


def linear_logits(arrays: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The one linear-head format: ``weight`` (classes, dim) and ``bias`` (classes,), so
    logits = x @ weight.T + bias: the zero-shot classifier, the linear probe, the
    text-initialised head and CLAP all compute their logits here."""
    return x @ arrays["weight"].T + arrays["bias"]


def zero_shot_head(text: np.ndarray, logit_scale: float) -> dict[str, np.ndarray]:
    """The zero-shot classifier as a linear head: weight = logit_scale x the normalised
    class text embeddings, bias 0."""
    text = np.asarray(text, dtype=np.float32)
    return {"weight": np.float32(logit_scale) * text,
            "bias": np.zeros(len(text), dtype=np.float32)}


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())
