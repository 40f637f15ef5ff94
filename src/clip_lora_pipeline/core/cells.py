"""Cells of the few-shot protocol: one (shots, seed) pair, and the grid a sweep runs.

A cell's name is part of the catalog names and paths of everything that depends on the
few-shot sample (``<dataset>.shots_16_seed_1.train``), so cells never share an output
and a sweep is the same nodes as a single run, once per cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Any

from clip_lora_pipeline.core.errors import SettingsError

# What the published few-shot tables use (CoOp, Tip-Adapter, CLIP-LoRA).
PROTOCOL_SHOTS = (1, 2, 4, 8, 16)
PROTOCOL_SEEDS = (1, 2, 3)


class CellError(SettingsError):
    """Shots, seeds or a sweep grid that cannot be run."""


def _check_shots(shots: Any, where: str) -> None:
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
        raise CellError(f"{where} must be a positive integer (or null for all images), "
                        f"got {shots!r}.")


def _check_seed(seed: Any, where: str) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise CellError(f"{where} must be an integer, got {seed!r}.")


@dataclass(frozen=True)
class Cell:
    """``shots`` images per class (None: all of them), drawn and trained with ``seed``."""

    shots: int | None
    seed: int

    def __post_init__(self) -> None:
        _check_shots(self.shots, "shots")
        _check_seed(self.seed, "few_shot_seed")

    @property
    def name(self) -> str:
        return f"shots_{'all' if self.shots is None else self.shots}_seed_{self.seed}"

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Cell:
        """The single run's cell: parameters ``shots`` and ``few_shot_seed``."""
        return cls(params.get("shots"), params.get("few_shot_seed", 1))


@dataclass(frozen=True)
class SweepSettings:
    """``sweep: {shots: [...], seeds: [...]}``: every shots x seeds cell is run."""

    shots: tuple[int, ...] = PROTOCOL_SHOTS
    seeds: tuple[int, ...] = PROTOCOL_SEEDS

    def __post_init__(self) -> None:
        for key, values in (("shots", self.shots), ("seeds", self.seeds)):
            if not values or len(set(values)) != len(values):
                raise CellError(f"sweep.{key} must be a non-empty list without repeats, "
                                f"got {list(values)}.")
        for shots in self.shots:
            _check_shots(shots, "each of sweep.shots")
            if shots is None:
                raise CellError("sweep.shots lists shot counts; null (all images) is a "
                                "single run's setting, not a sweep's.")
        for seed in self.seeds:
            _check_seed(seed, "each of sweep.seeds")

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> SweepSettings:
        values = dict(params or {})
        unknown = sorted(set(values) - {"shots", "seeds"})
        if unknown:
            raise CellError(f"parameter 'sweep' takes shots and seeds; unknown: {unknown}.")
        for key in ("shots", "seeds"):
            if key in values and not isinstance(values[key], (list, tuple)):
                raise CellError(f"sweep.{key} must be a list, e.g. [1, 2, 4], got "
                                f"{values[key]!r}.")
        return cls(**{k: tuple(v) for k, v in values.items()})

    @property
    def cells(self) -> list[Cell]:
        return [Cell(shots, seed) for shots, seed in product(sorted(self.shots), sorted(self.seeds))]

    @property
    def name(self) -> str:
        """Part of the aggregate's path: another grid never overwrites this one's."""
        join = "-".join
        return f"shots_{join(map(str, sorted(self.shots)))}_seeds_{join(map(str, sorted(self.seeds)))}"
