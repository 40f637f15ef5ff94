"""A content-addressed cache of image checks: each file's validation result (width,
height, original mode, or the reason it was rejected), keyed by the hash of its bytes, in
a folder per version of the checks.

Scheduled retraining on a growing folder then decodes only the files it has not seen,
whatever their paths; a file rewritten in place has another hash and is checked again.
The folder name is a short hash of what decides a result besides the bytes: the checks'
own ``CHECKS_VERSION``, the Pillow version and its registered decoders (an upgrade or a
plugin can make a file readable) and ``Image.MAX_IMAGE_PIXELS`` (the decompression-bomb
limit), so results of other checks never mix.

Keys are ``core.store.file_hash`` (128 bits of SHA-256). Shards are immutable parquet
files written to a hidden staging name and renamed into place, or put as one object on
an object store (``core.atomic``), as the embedding store's are: a reader never sees a half-written one, writers in parallel never
take one another's name, and a compaction writes the merged shard before it removes
the small ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import PIL
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from upath import UPath

from clip_lora_pipeline.core import storage
from clip_lora_pipeline.core.atomic import atomic_path
from clip_lora_pipeline.core.runtime import usable_cpus
from clip_lora_pipeline.core.store import complete_shards, file_hash

logger = logging.getLogger(__name__)

CHECKS_VERSION = 1  # bump when core.images.check_image can return another result
FIELDS = ("width", "height", "mode", "reason")  # those of core.images.ImageCheck
SHARD_ROWS = 100_000
_DTYPES = {"key": "string", "width": "Int64", "height": "Int64", "mode": "string",
           "reason": "string"}
_SHARD = re.compile(r"[0-9a-f]+-\d+-[0-9a-f]+\.parquet")

Record = dict[str, Any]  # FIELDS -> value, None where absent


def checks_description() -> str:
    """What, besides a file's bytes, decides its check result (see the module's doc)."""
    Image.init()  # registers every decoder Image.open may try
    return json.dumps({"version": CHECKS_VERSION, "pillow": PIL.__version__,
                       "decoders": sorted(Image.OPEN),
                       "max_image_pixels": Image.MAX_IMAGE_PIXELS}, sort_keys=True)


def _hash_or_none(path: Path | UPath) -> str | None:
    try:
        return file_hash(path)
    except OSError:  # missing, a broken link, unreadable: checked afresh, never stored
        return None


def content_hashes(paths: Sequence[Path | UPath], threads: int | None = None) -> list[str | None]:
    """``file_hash`` of each path, in order (None where the file cannot be read)."""
    with ThreadPoolExecutor(max_workers=threads or min(8, 2 * usable_cpus())) as pool:
        return list(pool.map(_hash_or_none, paths, chunksize=64))


def _read_shard(path: Path | UPath) -> pd.DataFrame:
    # Through fsspec: given an s3:// URL, pandas would use pyarrow's own S3 client, which
    # knows nothing of fsspec's settings (endpoint, credentials).
    with storage.open_for_read(path) as handle:
        return pd.read_parquet(handle)


class ValidationStore:
    """The shards of one version of the checks under ``root``; safe to read while
    others write."""

    def __init__(self, root: str | Path, description: str | None = None,
                 shard_rows: int = SHARD_ROWS):
        description = description or checks_description()
        self.folder = storage.data_path(root) / hashlib.sha256(description.encode()).hexdigest()[:12]
        self.shard_rows = shard_rows
        if not (self.folder / "checks.json").exists():
            with atomic_path(self.folder / "checks.json") as staging:
                staging.write_text(description + "\n")

    def shards(self) -> list[Path | UPath]:
        return complete_shards(self.folder, _SHARD)

    def lookup(self, hashes: Sequence[str | None]) -> list[Record | None]:
        """The stored record of each hash, in order; None where there is none. A shard
        that a compaction removes while this reads is found again in its replacement."""
        for _ in range(4):
            try:
                return self._lookup(hashes, missing_ok=False)
            except FileNotFoundError:
                continue
        return self._lookup(hashes, missing_ok=True)

    def _lookup(self, hashes: Sequence[str | None], missing_ok: bool) -> list[Record | None]:
        wanted = {h for h in hashes if h is not None}
        parts = []
        for path in self.shards() if wanted else []:
            try:
                shard = _read_shard(path)
            except FileNotFoundError:
                if missing_ok:
                    continue
                raise
            except (OSError, pa.ArrowException, ValueError) as exc:
                logger.warning("validation cache: skipping unreadable shard %s (%s)", path, exc)
                continue
            parts.append(shard[shard["key"].isin(wanted)])
        if not parts:
            return [None] * len(hashes)
        table = pd.concat(parts).drop_duplicates("key").set_index("key")[list(FIELDS)]
        table = table.astype(object).where(table.notna(), None)  # NA -> None, Int64 -> int
        found = table.to_dict("index")
        return [found.get(h) if h is not None else None for h in hashes]

    def add(self, hashes: Sequence[str], records: Sequence[Record]) -> list[Path | UPath]:
        """Store records (a hash twice: its first record), in shards of ``shard_rows``
        rows at most."""
        table = pd.DataFrame([{**r, "key": h} for h, r in zip(hashes, records)],
                             columns=list(_DTYPES))
        table = table.astype(_DTYPES).drop_duplicates("key")
        written = [self._write(table.iloc[i:i + self.shard_rows])
                   for i in range(0, len(table), self.shard_rows)]
        self.compact()
        return written

    def _write(self, table: pd.DataFrame) -> Path | UPath:
        # Time first: shards list in the order they were written. Pid and a random
        # part: writers in parallel never take one another's name.
        name = f"{time.time_ns():x}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
        with atomic_path(self.folder / name) as staging:
            table.to_parquet(staging, engine="pyarrow", index=False)
        return self.folder / name

    def compact(self, max_small: int = 16) -> None:
        """Merge the shards under ``shard_rows`` rows once there are more than
        ``max_small`` of them (every run that checks new files writes one). Two
        processes compacting at once at worst store some rows twice, which lookups
        tolerate."""
        small = []
        for path in self.shards():
            try:
                with storage.open_for_read(path) as handle:
                    rows = pq.read_metadata(handle).num_rows
                if rows < self.shard_rows:
                    small.append(path)
            except (OSError, pa.ArrowException):
                continue  # removed by another compaction, or unreadable: left alone
        if len(small) <= max_small:
            return
        parts = []
        for path in small:
            try:
                parts.append(_read_shard(path))
            except FileNotFoundError:  # another process merged it meanwhile
                continue
        if not parts:
            return
        merged = pd.concat(parts).astype(_DTYPES).drop_duplicates("key")
        for i in range(0, len(merged), self.shard_rows):
            self._write(merged.iloc[i:i + self.shard_rows])
        for path in small:
            path.unlink(missing_ok=True)
