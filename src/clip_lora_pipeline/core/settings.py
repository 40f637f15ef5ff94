"""Typed settings from a parameters mapping, the one way: a frozen dataclass whose
``__post_init__`` validates values (as peft's configs do), built from the mapping with
unknown keys named, lists turned into tuples, so a typo fails where the settings are
built (the pipeline registry builds them all before any node runs)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def from_params(cls: type[T], params: Mapping[str, Any] | None, where: str,
                error: type[Exception] = ValueError) -> T:
    """``cls(**params)``; an unknown key raises ``error`` naming ``where``.<key> and the
    keys ``cls`` takes, a wrong value whatever ``__post_init__`` raises."""
    values = dict(params or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise error(f"{', '.join(f'{where}.{k}' for k in unknown)}: unknown; {where} takes "
                    f"{sorted(known)}.")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return cls(**values)
    except TypeError as exc:  # e.g. a mapping where a number belongs
        raise error(f"{where}: {exc}") from None
