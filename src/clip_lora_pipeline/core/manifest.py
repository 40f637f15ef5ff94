"""The manifest: one row per image, the table every data source produces."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from clip_lora_pipeline.core.errors import UserError

MANIFEST_COLUMNS = ["path", "label", "class_name", "source_split"]
SPLITS = ("train", "val", "test")


class ManifestError(UserError, ValueError):
    """A source produced an inconsistent manifest."""


def make_manifest(
    paths: Sequence[str],
    labels: Sequence[int],
    class_names: Sequence[str],
    source_splits: Sequence[str | None] | None = None,
) -> pd.DataFrame:
    """Build a manifest from parallel lists.

    ``paths`` are POSIX paths relative to the dataset root, ``labels`` index into
    ``class_names`` (the human-readable names that later become prompts), and
    ``source_splits`` holds the split the source itself defines, or None.
    """
    if len(paths) != len(labels):
        raise ManifestError(f"{len(paths)} paths but {len(labels)} labels.")
    if len(set(class_names)) != len(class_names):
        seen: set[str] = set()
        dupes = sorted({n for n in class_names if n in seen or seen.add(n)})
        raise ManifestError(f"Class names must be unique; repeated: {dupes}.")
    if source_splits is None:
        source_splits = [None] * len(paths)
    unknown = sorted({s for s in source_splits if s is not None and s not in SPLITS})
    if unknown:
        raise ManifestError(f"Unknown split names {unknown}; expected one of {SPLITS}.")
    bad = sorted({int(label) for label in labels if not 0 <= int(label) < len(class_names)})
    if bad:
        raise ManifestError(
            f"Labels {bad[:5]} are outside 0..{len(class_names) - 1} ({len(class_names)} classes)."
        )
    frame = pd.DataFrame(
        {
            "path": pd.Series(list(paths), dtype="string"),
            "label": pd.Series([int(v) for v in labels], dtype="int64"),
            "class_name": pd.Series(
                [class_names[int(v)] for v in labels], dtype="string"
            ),
            "source_split": pd.Series(list(source_splits), dtype="string"),
        }
    )
    duplicated = frame["path"][frame["path"].duplicated()]
    if not duplicated.empty:
        raise ManifestError(f"Paths listed twice: {duplicated.head(5).tolist()}.")
    return frame.sort_values("path", ignore_index=True)


def class_table(manifest: pd.DataFrame) -> list[str]:
    """Class names ordered by label, read back from a manifest."""
    pairs = manifest[["label", "class_name"]].drop_duplicates().sort_values("label")
    return pairs["class_name"].tolist()
