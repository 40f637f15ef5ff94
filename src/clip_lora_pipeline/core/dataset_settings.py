"""One dataset's settings (a ``dataset_configs.<name>`` entry), checked once.

``protocol`` picks how train / val / test are made: ``coop`` uses CoOp's fixed split
(its split file, or the official lists where CoOp uses those) so results compare with
CoOp, Tip-Adapter and CLIP-LoRA; ``official`` reads the publisher's own lists (a source
without one is split by ``split.fractions``). ``split_file`` names a split file of your
own, in CoOp's format, for any source; it overrides the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from upath import UPath

from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.sources import Source, SourceError, get_source

PROTOCOLS = ("coop", "official")
KEYS = ("source", "root", "options", "protocol", "split_file", "allow_repeats")
_EXAMPLE = (
    "Example:\n  dataset_configs:\n    flowers102:\n      source: flowers102\n"
    "      root: data/01_raw/flowers102"
)


class DatasetSettingsError(SourceError):
    """A ``dataset_configs`` entry is missing a key or has a wrong one."""


def _source(where: str, name: Any) -> Source:
    if not isinstance(name, str):
        raise DatasetSettingsError(f"{where}.source must be a source name, got {name!r}.")
    try:
        return get_source(name)
    except SourceError as exc:
        raise DatasetSettingsError(f"{where}.source: {exc}") from None


@dataclass(frozen=True)
class DatasetSettings:
    """``name`` is the dataset's key under ``dataset_configs`` (used in messages).

    ``split_file``, when relative, is relative to ``root`` (where CoOp keeps its files).
    ``allow_repeats``: a class with fewer images than the shots asked for is filled up
    by repeating images, as CoOp does, instead of stopping the run.
    """

    name: str
    source: str
    root: Path | UPath
    options: dict[str, Any] = field(hash=False)
    protocol: str
    split_file: Path | None
    allow_repeats: bool

    def __post_init__(self) -> None:
        where = f"dataset_configs.{self.name}"
        source = _source(where, self.source)
        if not isinstance(self.options, dict):
            raise DatasetSettingsError(f"{where}.options must be a mapping, got {self.options!r}.")
        if self.protocol not in PROTOCOLS:
            raise DatasetSettingsError(
                f"{where}.protocol must be one of {list(PROTOCOLS)}, got {self.protocol!r}."
            )
        if self.protocol == "coop" and not source.coop_protocol and self.split_file is None:
            raise DatasetSettingsError(
                f"{where}.protocol: source '{self.source}' is not one of CoOp's datasets, so "
                "it has no CoOp split. Use protocol: official, or give split_file."
            )
        if storage.is_remote(self.root) and not source.any_filesystem:
            raise DatasetSettingsError(
                f"{where}.root is {self.root}, not a local folder; source '{self.source}' "
                "downloads and unpacks its archives and reads them by local path, so its "
                f"root must be local (e.g. root: data/01_raw/{self.name}). Sources that "
                "read any filesystem (s3://, gs://, abfs://): image_folder, synthetic."
            )
        if not isinstance(self.allow_repeats, bool):
            raise DatasetSettingsError(
                f"{where}.allow_repeats must be true or false, got {self.allow_repeats!r}."
            )
        source.check_options(self.name, self.options)

    @classmethod
    def from_params(cls, name: str, params: dict[str, Any]) -> DatasetSettings:
        """Settings from one ``dataset_configs.<name>`` entry, defaults filled in."""
        where = f"dataset_configs.{name}"
        if not isinstance(params, dict):
            raise DatasetSettingsError(f"{where} must be a mapping, got {params!r}. {_EXAMPLE}")
        unknown = sorted(set(params) - set(KEYS))
        if unknown:
            raise DatasetSettingsError(
                f"{', '.join(f'{where}.{k}' for k in unknown)}: unknown key(s); a dataset "
                f"entry takes {list(KEYS)}."
            )
        if "source" not in params or "root" not in params:
            raise DatasetSettingsError(
                f"{where} needs 'source' and 'root'; got keys {sorted(params)}. {_EXAMPLE}"
            )
        for key in ("root", "split_file"):
            if params.get(key) is not None and not isinstance(params[key], (str, Path)):
                raise DatasetSettingsError(f"{where}.{key} must be a path, got {params[key]!r}.")
        # CoOp's benchmark datasets default to CoOp's protocol, repeats included.
        benchmark = _source(where, params["source"]).coop_protocol
        options = params.get("options")
        split_file = params.get("split_file")
        allow_repeats = params.get("allow_repeats")
        return cls(
            name=name,
            source=params["source"],
            root=storage.data_path(params["root"]),
            options=dict(options) if isinstance(options, dict) else options or {},
            protocol=params.get("protocol") or ("coop" if benchmark else "official"),
            split_file=Path(split_file) if split_file else None,
            allow_repeats=benchmark if allow_repeats is None else allow_repeats,
        )

    def split_file_path(self) -> Path | UPath | None:
        """The split file the manifest comes from: ``split_file`` (relative to the root),
        else CoOp's under protocol coop where CoOp has one, else None (the source's
        own lists)."""
        if self.split_file is not None:
            return self.root / self.split_file
        coop_split = get_source(self.source).coop_split
        if self.protocol == "coop" and coop_split is not None:
            return self.root / coop_split.filename
        return None
